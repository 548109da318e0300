"""probekit-perturb: perturbations, LPIPS, captum attribution metrics and representation robustness.

This module only registers types with the core (pydantic options models, import
strings); torch, lpips and captum are imported when a type is used, so that
`probekit plugins` stays fast. The Python API lives in the submodules:
`probekit_perturb.perturbations`, `probekit_perturb.color`,
`probekit_perturb.representation` (`linear_cka`),
`probekit_perturb.attribution` (`Attributor`, `infidelity_score`,
`sensitivity_score`) and `probekit_perturb._lpips` (`build_lpips`).
"""

from __future__ import annotations

from typing import Any

import probekit_core.required  # noqa: F401  (first: stops with a clear message if `probekit` is not ours)
from probekit import hookimpl
from probekit_perturb.options import (
    AttributionMetricOptions,
    CKAOptions,
    FactorOptions,
    GrayscaleOptions,
    HueRotateOptions,
    HueSetOptions,
    LogitDistanceOptions,
    LPIPSOptions,
    NoiseOptions,
    NoOptions,
    OcclusionOptions,
    RobustnessOptions,
)

__version__ = "0.1.0"  # the one place of the version (pyproject.toml reads it)

_P = "probekit_perturb.perturbations"
_R = "probekit_perturb.representation"
_A = "probekit_perturb.attribution"



@hookimpl
def probekit_register_perturbations(register: Any) -> None:
    register(
        "hue-set",
        f"{_P}:HueSet",
        options=HueSetOptions,
        description="Set every pixel's HSV hue to a colour (red, green, blue, ... or degrees).",
    )
    register(
        "hue-rotate",
        f"{_P}:HueRotate",
        options=HueRotateOptions,
        description="Rotate every pixel's HSV hue by an angle in degrees.",
    )
    register(
        "grayscale",
        f"{_P}:Grayscale",
        options=GrayscaleOptions,
        description="Replace colour by its luma (BT.601).",
    )
    register(
        "brightness",
        f"{_P}:Brightness",
        options=FactorOptions,
        description="Scale brightness (pixel values) by a factor, clipped to [0, 1].",
    )
    register(
        "saturation",
        f"{_P}:Saturation",
        options=FactorOptions,
        description="Scale HSV saturation by a factor.",
    )
    register("noise", f"{_P}:Noise", options=NoiseOptions, description="Add Gaussian noise.")
    register(
        "occlusion",
        f"{_P}:Occlusion",
        options=OcclusionOptions,
        description="Paint square patches at random places.",
    )


@hookimpl
def probekit_register_metrics(register: Any) -> None:
    register(
        "lpips",
        "probekit_perturb._lpips:LPIPSMetric",
        options=LPIPSOptions,
        description="LPIPS perceptual distance (lpips package; offline backbone weights from a file).",
        higher_is_better=False,
        kind="image",
    )
    register(
        "cka",
        f"{_R}:CKA",
        options=CKAOptions,
        description="Linear CKA between perturbed (pred) and clean (target) states.",
        higher_is_better=True,
        kind="representation",
    )
    register(
        "cosine",
        f"{_R}:Cosine",
        options=NoOptions,
        description="Mean cosine similarity between perturbed and clean states.",
        higher_is_better=True,
        kind="representation",
    )
    register(
        "flip_rate",
        f"{_R}:FlipRate",
        options=NoOptions,
        description="Share of changed predictions between perturbed and clean logits.",
        higher_is_better=False,
        kind="output",
    )
    register(
        "logit_distance",
        f"{_R}:LogitDistance",
        options=LogitDistanceOptions,
        description="Mean L2 distance between perturbed and clean logits.",
        higher_is_better=False,
        kind="output",
    )
    register(
        "infidelity",
        f"{_A}:Infidelity",
        options=AttributionMetricOptions,
        description="captum infidelity of an attribution method; model-bound: .bind(adapter), then "
        "update(images, labels).",
        higher_is_better=False,
        needs_model=True,
        kind="attribution",
    )
    register(
        "sensitivity",
        f"{_A}:Sensitivity",
        options=AttributionMetricOptions,
        description="captum sensitivity_max of an attribution method; model-bound: .bind(adapter), then "
        "update(images, labels).",
        higher_is_better=False,
        needs_model=True,
        kind="attribution",
    )


@hookimpl
def probekit_register_probes(register: Any) -> None:
    register(
        "robustness",
        "probekit_perturb._robustness:RobustnessProbe",
        options=RobustnessOptions,
        description="How much each layer's representation and the output move under input perturbations.",
        computes=["cka", "cosine", "flip_rate", "logit_distance"],
        accepts_metrics=["image"],  # the spec's metrics compare each perturbed image with the clean one
    )
