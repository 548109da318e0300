"""Options of probekit-perturb's types: perturbations, metrics, attribution and the robustness probe.

Validated once by the core from the spec (pydantic models; `extra` keys are refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from probekit import Options, Section, SpecPath


# -- perturbations -----------------------------------------------------------------------------
class _Seeded(Options):
    seed: int = Field(
        0,
        ge=0,
        description="Seed of the perturbation's own generator (random ones only; a "
        "generator passed to the call takes precedence).",
    )


class HueSetOptions(_Seeded):
    color: Literal["red", "yellow", "green", "cyan", "blue", "magenta"] | float = Field(
        "red", description="Target hue: a colour name or a hue in degrees (0 red, 120 green, 240 blue)."
    )


class HueRotateOptions(_Seeded):
    degrees: float = Field(120.0, description="Hue rotation in degrees (360 is the identity).")


class GrayscaleOptions(_Seeded):
    pass


class FactorOptions(_Seeded):
    factor: float = Field(0.5, ge=0, description="Multiplier (1 is the identity); results clipped to [0, 1].")


class NoiseOptions(_Seeded):
    std: float = Field(0.1, ge=0, description="Standard deviation of the Gaussian noise, in [0, 1] pixel units.")
    clip: bool = Field(True, description="Clip the result to [0, 1].")


class OcclusionOptions(_Seeded):
    size: int = Field(8, ge=1, description="Side of each square patch in pixels.")
    count: int = Field(1, ge=1, description="Patches per image, at random places.")
    value: float = Field(0.0, ge=0, le=1, description="Fill value of the patches.")


# -- metrics -------------------------------------------------------------------------------------
class LPIPSOptions(Options):
    net: Literal["alex", "vgg", "squeeze"] = Field("alex", description="Backbone of lpips.LPIPS.")
    weights: SpecPath | None = Field(
        None,
        description="torchvision state dict of the backbone (keys 'features.*'); default: "
        "$PROBEKIT_LPIPS_WEIGHTS (a file or a folder), then torch hub's cache.",
    )
    download: bool = Field(False, description="Let torchvision download the backbone weights if none are found.")

    @field_validator("weights")
    @classmethod
    def _exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(
                f"LPIPS backbone weights not found: {value} (a torchvision state dict of the "
                "backbone, e.g. alexnet_features.pth for net alex; paths in a spec are relative "
                "to the spec's folder)"
            )
        return value


class NoOptions(Options):
    pass


class CKAOptions(Options):
    dtype: Literal["float32", "float64"] = Field("float32", description="Storage type of the kept states.")


class LogitDistanceOptions(Options):
    relative: bool = Field(False, description="Divide by the norm of the clean logits.")


class PerturbationSpec(Section):
    """A registered perturbation as `{type: noise, std: 0.05}` (options validated by its owner)."""

    kind: ClassVar[str] = "perturbations"
    reserved: ClassVar[frozenset[str]] = frozenset({"name", "region"})

    type: str = Field(..., description="Registered perturbation name (`probekit list perturbations`).")
    name: str | None = Field(None, description="Label in tables and figures (default: type and options).")
    region: list[float] | None = Field(
        None,
        min_length=4,
        max_length=4,
        description="Restrict the perturbation to a box [top, left, height, width], in fractions of the "
        "image size (the perturbation's mask).",
    )

    @model_validator(mode="after")
    def _check_region(self) -> PerturbationSpec:
        if self.region is not None:
            top, left, height, width = self.region
            if not (0 <= top < 1 and 0 <= left < 1 and 0 < height <= 1 - top and 0 < width <= 1 - left):
                raise ValueError(
                    f"region {self.region} is not a box inside the image: give [top, left, height, "
                    "width] as fractions, e.g. [0.25, 0.25, 0.5, 0.5] for the centre"
                )
        return self


    def label(self) -> str:
        if self.name:
            return self.name
        opts = {k: v for k, v in self.options().items() if k != "seed"}
        if not opts:
            text = self.type
        elif len(opts) == 1:
            text = f"{self.type} {next(iter(opts.values()))}"
        else:
            text = f"{self.type} " + " ".join(f"{k}={v}" for k, v in opts.items())
        if self.region is not None:
            text += " in [" + " ".join(f"{v:g}" for v in self.region) + "]"
        return text


class AttributionMetricOptions(Options):
    method: str = Field(
        "integrated-gradients",
        description="integrated-gradients, saliency, gradient-x-input, occlusion or grad-cam.",
    )
    perturbation: PerturbationSpec = Field(
        default_factory=lambda: PerturbationSpec.model_validate({"type": "noise", "std": 0.05}),
        description="The perturbation I of the metric, a registered one.",
    )
    n_perturb_samples: int = Field(10, ge=1, description="Perturbed copies per example.")
    layer: str | None = Field(None, description="Layer of grad-cam (an adapter layer name).")
    seed: int = Field(0, ge=0)
    method_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the method (n_steps, baseline, abs, window)."
    )

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        from probekit_perturb._names import method_name

        return method_name(value)


# -- the probe -------------------------------------------------------------------------------------
class AttributionOptions(Options):
    method: str = Field(
        "integrated-gradients",
        description="integrated-gradients, saliency, gradient-x-input, occlusion or grad-cam.",
    )
    metrics: list[Literal["infidelity", "sensitivity"]] = Field(["infidelity", "sensitivity"])
    layer: str | None = Field(None, description="Layer of grad-cam (an adapter layer name).")
    limit: int = Field(32, ge=1, description="Examples to score (the first ones of the probe's examples).")
    n_perturb_samples: int = Field(8, ge=1, description="Perturbed copies per example for each metric.")
    normalize: bool = Field(
        False,
        description="infidelity: scale the attributions by the best factor first (for methods whose "
        "scale is arbitrary, such as grad-cam).",
    )
    method_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the method (n_steps, baseline, abs, window)."
    )

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        from probekit_perturb._names import method_name

        return method_name(value)


class RobustnessOptions(Options):
    layers: list[str] | Literal["all"] = Field(..., description="Adapter layer names whose states are compared.")
    perturbations: list[PerturbationSpec] = Field(
        ..., min_length=1, description="Perturbations, each `{type: ..., <options>}`."
    )
    metrics: list[Literal["cka", "cosine"]] = Field(
        ["cka", "cosine"], description="Clean-vs-perturbed similarity per layer."
    )
    output_metrics: list[Literal["flip_rate", "logit_distance"]] = Field(
        ["flip_rate", "logit_distance"], description="Change of the model output (layer `output`)."
    )
    split: Literal["train", "test"] = Field("test", description="Data split the examples come from.")
    limit: int | None = Field(512, ge=2, description="Number of examples (None: the whole split).")
    pool: Literal["flatten", "mean"] = Field(
        "flatten", description="States compared as flattened vectors, or averaged over tokens / positions."
    )
    attribution: AttributionOptions | None = Field(
        None,
        description="Score an attribution method under each perturbation (captum infidelity and sensitivity_max).",
    )
    show: int = Field(8, ge=0, description="Examples shown per perturbation in figures/perturbations.png.")
