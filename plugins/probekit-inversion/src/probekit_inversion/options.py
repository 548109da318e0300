"""Options of the `inversion` probe (pydantic only: importing this module does not import torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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

    layers: list[str] | Literal["all"] | None = Field(
        None,
        description="Layers to reconstruct from (depth order is taken from the model), or 'all'; "
        "with granularity `component` leave it out.",
    )
    granularity: Literal["layer", "component"] = Field(
        "layer",
        description="component: one inverse per model component as the study builds them (ViT: patch "
        "embedding, the whole encoder; DETR: backbone, encoder, decoder, head), the components declared by "
        "the model's adapter; layer: the listed layers, one inverse per adjacent pair.",
    )
    inverses: list[Literal["modular", "direct"]] = Field(
        ["modular", "direct"],
        min_length=1,
        description="modular: one inverse module per adjacent pair, each trained on its pair alone, chained "
        "to pixels (the study's method; gives the chained reconstruction and each module's loss); direct: "
        "for every layer an inverse trained from that layer straight to pixels (the information the layer "
        "holds; the study's end-to-end baseline).",
    )
    mode: Literal["modular", "end-to-end"] | None = Field(
        None,
        description="Shorthand: `end-to-end` is `inverses: [direct]`; `modular` leaves `inverses` as given.",
    )
    target: Literal["cached", "chained"] = Field(
        "cached",
        description="Modular inputs: cached states of layer k, or the output of the already "
        "trained module k+1 (reduces chain drift).",
    )
    epochs: int = Field(10, ge=1, description="Epochs per inverse module (at most, see `patience`).")
    batch_size: BatchSize = Field(64, description=BATCH_SIZE_HELP)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(
        1.0, gt=0, description="Clip the gradient norm of each inverse to this value (the study: 1.0); null: off."
    )
    validation: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of the training rows held out to validate every inverse after each epoch; the "
        "epoch with the best validation loss is kept, as in the study (0: keep the last epoch).",
    )
    patience: int | None = Field(
        None, ge=1, description="Stop an inverse after this many epochs without a better validation loss."
    )
    head_input: Literal["onehot", "logits"] = Field(
        "onehot",
        description="What the inverse of a detection head (DETR) sees: the argmax class as a one-hot "
        "vector plus the boxes (the study), or the raw class logits plus the boxes.",
    )
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
    figure_images: int = Field(
        10, ge=1, description="Test images (rows) of the reconstruction figures: one per class, then the most "
        "different ones.",
    )
    use_defaults: bool = Field(
        True, description="Merge adapters' suggested options (probekit_probe_defaults)."
    )

    @model_validator(mode="after")
    def _layers_or_components(self) -> InversionOptions:
        if self.granularity == "layer" and self.layers is None:
            raise ValueError("`layers` is required with granularity `layer` (or set `granularity: component`)")
        if self.granularity == "component" and self.layers is not None:
            raise ValueError("granularity `component` takes the model's components; leave `layers` out")
        return self
