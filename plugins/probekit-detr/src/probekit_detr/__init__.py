"""probekit-detr: the Hugging Face DETR object detector as model type `detr`.

This module is what the `probekit` entry point loads: it registers the type and
its options model only; torch and transformers are imported when a `detr` model
is built (`probekit_detr._adapter`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

import probekit_core.required  # noqa: F401  (first: stops with a clear message if `probekit` is not ours)
from probekit import ExistingPath, Options, hookimpl

__version__ = "0.1.0"  # the one place of the version (pyproject.toml reads it)


class DetrOptions(Options):
    """Options of `model: {type: detr, ...}`."""

    name: str | None = Field(
        None,
        description="A hub id (facebook/detr-resnet-50) or a local directory written by save_pretrained. "
        "Leave out to build a randomly initialised DETR from `config` alone.",
    )
    pretrained: bool | None = Field(
        None,
        description="Load the checkpoint's weights (default when `name` is given); false: random init "
        "from its config.",
    )
    weights: ExistingPath | None = Field(
        None,
        description="A local state dict (.safetensors, or torch file read with weights_only=True) to load.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="DetrConfig overrides (d_model, encoder_layers, num_queries, backbone_config, ...).",
    )
    size: tuple[int, int] | None = Field(
        None,
        description="Fixed input size [H, W]: images are stretched to it, no padding (the inversion study "
        "uses [480, 640]). Default: the image processor's rule (shortest edge 800, longest at "
        "most 1333, aspect ratio kept).",
    )
    trust_remote_code: bool = Field(False, description="Allow code from the model repository to run.")

    @model_validator(mode="after")
    def _check(self) -> DetrOptions:
        if self.name is None and self.pretrained:
            raise ValueError("`pretrained: true` needs `name:` (a hub id or a local directory)")
        if self.size is not None and min(self.size) < 32:
            raise ValueError(f"size {list(self.size)} is too small: DETR's backbone has stride 32")
        return self


@hookimpl
def probekit_register_models(register: Any) -> None:
    register(
        "detr",
        "probekit_detr._adapter:DetrAdapter",
        options=DetrOptions,
        description="DETR object detector (Hugging Face): backbone, encoder.i, decoder.i, head.",
    )


@hookimpl
def probekit_probe_defaults(probe: str, model: Any) -> dict[str, Any] | None:
    """For the `inversion` probe: the study's components of DETR (backbone, encoder, decoder, head)."""
    if probe != "inversion" or getattr(model, "type_name", None) != "detr":
        return None
    return {"components": model.components()}


__all__ = ["DetrOptions", "probekit_probe_defaults", "probekit_register_models", "__version__"]
