"""Spec options of the `length-generalization` probe (light: no torch import)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from probekit import BATCH_SIZE_HELP, BatchSize, Options

Variant = Literal["mamba", "mamba-length-adaptive", "transformer"]


class LengthGenOptions(Options):
    """Train sequence models to reconstruct images from L random patches; evaluate across lengths."""

    variants: list[Variant] = Field(
        ["mamba", "mamba-length-adaptive", "transformer"], min_length=1,
        description="Sequence models to train: mamba, mamba-length-adaptive (length token), transformer.")
    train_lengths: tuple[int, int] = Field(
        (8, 64), description="[a, b]: each training batch has L ~ U{a..b} context patches.")
    eval_lengths: list[int] | None = Field(
        None, description="Context lengths to evaluate (default: a, the middle, b and 1.5x-4x b); "
                          "b is always added.")
    prefix_lengths: list[int] | None = Field(
        None, description="Prefix lengths of figures/prefix_reconstructions.png (default: 6 lengths up to "
                          "the largest eval length).")
    patch_size: int = Field(4, ge=1, description="Side of the square patches.")
    queries: int = Field(64, ge=1, description="Q: query positions per sequence whose patches are predicted.")
    d_model: int = Field(16, ge=4, description="Token width = model width (d - 2 patch values + x, y).")
    n_layers: int = Field(8, ge=1, description="Layers of every sequence model.")
    state_size: int = Field(8, ge=1, description="Mamba state size N.")
    expand: int = Field(2, ge=1, description="Mamba expansion factor (inner width = expand * d_model).")
    use_conv: bool = Field(False, description="Keep Mamba's depthwise conv1d (the study removed it).")
    dt_scaling: bool = Field(False, description="mamba-length-adaptive also shifts dt with log(L / 100), "
                                                "a learned per-channel exponent.")
    output: Literal["sigmoid", "linear"] = Field(
        "sigmoid", description="Patch head: sigmoid(Linear(d, C p p)) as in the study, or linear.")
    transformer_heads: int = Field(8, ge=1, description="Attention heads of the transformer baseline (study: 8).")
    transformer_layer_scale: float = Field(
        1e-4, gt=0, description="Initial layer scale of the transformer's residual branches (study: 1e-4).")
    backend: str = Field("auto", description="Mamba scan backend passed to the plugin's model builder.")
    epochs: int = Field(5, ge=1)
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Batches per epoch (default: training images // batch_size).")
    batch_size: BatchSize = Field(64, description=BATCH_SIZE_HELP)
    lr: float = Field(3e-4, gt=0, description="Adam learning rate (the study: Lamb, 3e-4; torch has no Lamb).")
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="Learning rate over the training steps after the warm-up: constant (the "
                                "study's), or a cosine decay from lr to lr / 20 at the last step.")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear learning-rate warm-up from lr / warmup_steps.")
    grad_clip: float | None = Field(
        1.0, gt=0, description="Clip the gradients' global L2 norm to this before every step (the study: 1.0); "
                               "null: no clipping. As `model.train`'s `grad_clip`.")
    keep: Literal["last", "best"] = Field(
        "last", description="Which weights of every variant are evaluated: the last epoch's, or the epoch's with "
                            "the lowest patch MSE on a validation split of val_fraction of the training images "
                            "(which are then not trained on), at lengths a, the middle and b of train_lengths. "
                            "As `model.train`'s `keep`.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the training images held out for "
                                                             "validation when keep is best.")
    weight_decay: float = Field(0.0, ge=0)
    eval_images: int = Field(256, ge=1, description="Test images evaluated at every length.")
    eval_batch_size: int = Field(128, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "clip_grad" in data:
            raise ValueError("`clip_grad` is now `grad_clip` (the name model.train and every training probe use)")
        if isinstance(data, dict) and "threads" in data:
            raise ValueError("`threads` is now the spec's top-level `threads:` (one setting for the whole run, "
                             "model.train and every probe)")
        return data

    @field_validator("train_lengths")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        a, b = v
        if a < 1 or b < a:
            raise ValueError(f"must be [a, b] with 1 <= a <= b, e.g. [8, 64]; got [{a}, {b}]")
        return v

    @field_validator("eval_lengths", "prefix_lengths")
    @classmethod
    def _lengths(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v or min(v) < 1:
                raise ValueError("must be a non-empty list of lengths >= 1")
            return sorted(set(v))
        return v

    @field_validator("variants")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"variants must not repeat; got {v}")
        return v

    @model_validator(mode="after")
    def _heads(self) -> LengthGenOptions:
        if "transformer" in self.variants and self.d_model % self.transformer_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by transformer_heads "
                             f"({self.transformer_heads})")
        return self

    def resolved_eval_lengths(self) -> list[int]:
        a, b = self.train_lengths
        if self.eval_lengths is None:
            lengths = {a, (a + b) // 2, b, int(1.5 * b), 2 * b, 3 * b, 4 * b}
        else:
            lengths = set(self.eval_lengths) | {b}
        return sorted(lengths)

    def resolved_prefix_lengths(self) -> list[int]:
        if self.prefix_lengths is not None:
            return list(self.prefix_lengths)
        top = max(self.resolved_eval_lengths())
        return sorted({max(1, round(top * f)) for f in (1 / 64, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1)})
