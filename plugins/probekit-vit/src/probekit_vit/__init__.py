"""probekit-vit: Vision Transformer model adapters (timm and Hugging Face), model type `vit`.

This module is what the `probekit` entry point loads: it registers the type and
its options model only. torch, timm and transformers are imported lazily, when a
`vit` model is built (`probekit_vit._adapter`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

import probekit_core.required  # noqa: F401  (first: stops with a clear message if `probekit` is not ours)
from probekit import ExistingPath, Options, hookimpl

__version__ = "0.1.0"  # the one place of the version (pyproject.toml reads it)


class VitOptions(Options):
    """Options of `model: {type: vit, ...}`."""

    source: Literal["timm", "hf"] = Field(
        "timm",
        description="timm: a timm VisionTransformer by model name; hf: a Hugging Face ViTModel / "
        "ViTForImageClassification by hub id or local directory.",
    )
    name: str = Field(
        ...,
        min_length=1,
        description="timm model name (vit_base_patch16_224, deit_tiny_patch16_224, "
        "...) or, for source hf, a hub id or a local directory.",
    )
    pretrained: bool | None = Field(
        None,
        description="Load the published weights. Default: false for timm (random init), true for hf "
        "(name is a checkpoint). Needs the model hub, or a local directory for hf.",
    )
    weights: ExistingPath | None = Field(
        None,
        description="A local state dict (.safetensors, or a torch file read with weights_only=True) loaded "
        "into the model; the offline way to use published timm weights.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra constructor options: timm create_model kwargs (img_size, "
        "patch_size, depth, embed_dim, num_heads, num_classes, in_chans, ...) or, "
        "for hf, config overrides (num_labels, image_size, ...).",
    )
    trust_remote_code: bool = Field(
        False, description="hf only: allow code from the model repository to run."
    )

    @model_validator(mode="after")
    def _check(self) -> VitOptions:
        if self.weights is not None and self.pretrained:
            raise ValueError("give either `pretrained: true` or `weights: PATH`, not both")
        if self.source == "timm" and self.trust_remote_code:
            raise ValueError("trust_remote_code only applies to `source: hf`")
        return self


@hookimpl
def probekit_register_models(register: Any) -> None:
    register(
        "vit",
        "probekit_vit._adapter:VitAdapter",
        options=VitOptions,
        description="Vision Transformer (timm or Hugging Face): embed, block.i(.attn/.mlp), norm, head.",
    )


@hookimpl
def probekit_probe_defaults(probe: str, model: Any) -> dict[str, Any] | None:
    """For the `inversion` probe: the study's components of a ViT (the patch embedding, the whole encoder)."""
    if probe != "inversion" or getattr(model, "type_name", None) != "vit":
        return None
    return {"components": model.components()}


__all__ = ["VitOptions", "probekit_probe_defaults", "probekit_register_models", "__version__"]
