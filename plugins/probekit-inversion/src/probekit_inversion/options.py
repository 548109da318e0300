"""Options of the `inversion` probe (pydantic only: importing this module does not import torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from probekit import BATCH_SIZE_HELP, BatchSize, Options


class ArchitectureOptions(Options):
    """Architecture of the inverse modules; `None` means an adapter's suggestion or the built-in default."""

    depth: int | None = Field(
        None, ge=1, description="Transformer layers per token inverse module (default 1)."
    )
    heads: int | None = Field(
        None,
        ge=1,
        description="Attention heads (default: width / 32, at least 1, adjusted to divide the width).",
    )
    mlp_ratio: float | None = Field(
        None, gt=0, description="MLP width / token width in transformer layers (default 4, as timm's Block)."
    )
    hidden: int | None = Field(
        None,
        ge=1,
        description="Hidden width of MLP inverse modules (default 512) and "
        "of convolutional inverse modules of maps (default 64).",
    )
    conv_channels: list[int] | None = Field(
        None,
        description="Channels after each x2 transposed-convolution "
        "stage of the image upsampler (default: the "
        "input width halved at every stage, at least 16).",
    )
    position_embedding: bool | None = Field(
        None, description="Add a learned position embedding to token inputs (default true)."
    )


class ColourOptions(Options):
    """Settings of the colour-robustness analysis."""

    perturbations: list[str] = Field(
        ["hue-set:red", "hue-set:green", "hue-set:blue", "hue-rotate:120", "hue-rotate:240", "grayscale"],
        description="Perturbations as name or name:value (hue-set takes a colour, hue-rotate degrees).",
    )
    mask: Literal["auto", "coco", "data", "box"] = Field(
        "auto",
        description="Region to perturb: COCO instance masks (needs coco_annotations), masks the data "
        "source provides, or `box`; auto picks the first available in that order.",
    )
    coco_annotations: str | None = Field(
        None,
        description="COCO instances JSON for folder data of COCO "
        "images (matched by file name; needs pycocotools).",
    )
    category: str | None = Field(
        None,
        description="COCO category whose instance masks are perturbed (e.g. person); default: all instances.",
    )
    box: tuple[float, float, float, float] = Field(
        (0.25, 0.25, 0.75, 0.75), description="Box (x0, y0, x1, y1) as fractions of width and height."
    )
    images: int = Field(64, ge=1, description="Test images used (those with a non-empty mask).")
    min_saturation: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Pixels less saturated than this are left out of the hue error (their hue is undefined).",
    )


class InversionOptions(Options):
    """Options of the `inversion` probe."""

    layers: list[str] | Literal["all"] = Field(
        ..., description="Layers to reconstruct from (depth order is taken from the model), or 'all'."
    )
    mode: Literal["modular", "end-to-end"] = Field(
        "modular",
        description="modular: one inverse module per adjacent pair, trained on that pair only; "
        "end-to-end: one chain per depth trained directly to pixels (baseline).",
    )
    target: Literal["cached", "chained"] = Field(
        "cached",
        description="Modular inputs: cached states of layer k, or the output of the already "
        "trained module k+1 (reduces chain drift).",
    )
    epochs: int = Field(10, ge=1, description="Epochs per inverse module (per chain in end-to-end mode).")
    batch_size: BatchSize = Field(64, description=BATCH_SIZE_HELP)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    analyses: list[Literal["correlation", "colour"]] = Field(
        default_factory=list, description="Extra analyses: layer correlation, colour robustness."
    )
    architecture: ArchitectureOptions = Field(
        default_factory=ArchitectureOptions,  # type: ignore[arg-type]
        description="Inverse-module architecture.",
    )
    colour: ColourOptions = Field(
        default_factory=ColourOptions,  # type: ignore[arg-type]
        description="Colour-robustness analysis settings.",
    )
    figure_images: int = Field(6, ge=1, description="Rows (test images) of figures/reconstructions.png.")
    use_defaults: bool = Field(
        True, description="Merge adapters' suggested options (probekit_probe_defaults)."
    )
