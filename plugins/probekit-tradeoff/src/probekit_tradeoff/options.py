"""Options of the `tradeoff` probe (pydantic only: no torch import here)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from probekit import BATCH_SIZE_HELP, BatchSize, Options

#: Model families of the study, each an encoder / mirrored decoder / classifier around one latent.
FAMILIES: tuple[str, ...] = ("fc-small", "fc-medium", "fc-large", "cnn-small", "cnn-large", "vit-tiny")


class EncoderOptions(Options):
    """`encoder:`: feed a layer of another model (an adapter) into the tradeoff's encoder."""

    model: dict[str, Any] = Field(
        ...,
        description="A model section, as the spec's `model:` "
        "(`{type: module, factory: ...}`, `{type: vit, ...}`).",
    )
    layer: str = Field(
        ...,
        description="Canonical layer name of that model (e.g. `block.5`); its states "
        "are the input of the tradeoff's encoder.",
    )
    trainable: bool = Field(
        False,
        description="Also train the model's weights up to the layer (with the "
        "encoder's lambda-weighted gradient); false keeps it frozen.",
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Validate the nested model section with the options model of the plugin that owns its type."""
        from probekit import SpecError, get_plugin_manager, spec_error_from_validation

        if "type" not in v:
            raise ValueError('needs a `type:` (e.g. `model: {type: module, factory: "pkg.mod:fn"}`)')
        if "train" in v:
            raise ValueError(
                "`train:` is not supported here; train the model first and give its weights "
                "(e.g. `weights: model.safetensors` for the module adapter)"
            )
        try:
            entry = get_plugin_manager().get("models", str(v["type"]))
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        options = {k: value for k, value in v.items() if k != "type"}
        model = entry.options_model()
        if model is None:
            return v
        try:
            validated = model.model_validate(options, context=info.context)
        except ValidationError as exc:
            err = spec_error_from_validation(exc, model=model)
            raise ValueError(f"{err.path}: {err.message}. {err.fix}") from None
        return {"type": v["type"], **validated.model_dump()}


class TradeoffOptions(Options):
    """Options of the `tradeoff` probe. Every (family, latent, lambda) point is trained on its own."""

    families: list[Literal["fc-small", "fc-medium", "fc-large", "cnn-small", "cnn-large", "vit-tiny"]] = (
        Field(
            default=["fc-medium"],  # pydantic copies a mutable default for every instance
            min_length=1,
            description="Model families to sweep: " + ", ".join(FAMILIES) + ".",
        )
    )
    latents: list[int] = Field(
        default_factory=lambda: [2, 4, 16, 64],
        min_length=1,
        description="Sizes L of the shared latent layer.",
    )
    lambdas: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0],
        min_length=1,
        description="Weights of the reconstruction loss in lambda * MSE + (1 - lambda) * CE, each in [0, 1].",
    )
    epochs: int = Field(10, ge=1, description="Training epochs per sweep point (the study: 10).")
    batch_size: BatchSize = Field(512, description=f"{BATCH_SIZE_HELP} The study: 512.")
    distribute: Literal["batches", "points"] = Field(
        "batches",
        description="With several processes (`--nproc N` / torchrun): `batches` trains every sweep point on "
        "all processes together (DistributedDataParallel); `points` gives each process its own sweep points "
        "(round robin), trained alone, with the results of one process.",
    )
    lr: float = Field(
        1e-3, gt=0, description="Adam learning rate for encoder, decoder and classifier (the study: 1e-3)."
    )
    grad_clip: float | None = Field(
        None, gt=0, description="Clip the gradients' global L2 norm to this before every step (default: no "
        "clipping), as `model.train`'s `grad_clip`."
    )
    keep: Literal["last", "best"] = Field(
        "last",
        description="Which weights of every sweep point are evaluated: the last epoch's, or the epoch's with "
        "the lowest training loss (`lambda * MSE + (1 - lambda) * CE`) on a validation split of val_fraction "
        "of the training images (which are then not trained on), as `model.train`'s `keep`.",
    )
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of the training images held out for validation when keep is best."
    )
    latent_activation: Literal["none", "relu", "tanh"] = Field(
        "none",
        description="Activation on the latent layer of the fc-* and cnn-* families. The study's FC "
        "encoders end in ReLU (`relu`); `none` (a linear latent) avoids dead units at tiny L. vit-tiny's "
        "latent is its encoder's normalised tokens, as in the study, whatever this option says.",
    )
    baselines: list[Literal["pca", "random"]] = Field(
        default=["pca", "random"],
        description="Linear baselines at each latent size: PCA and a Gaussian random projection.",
    )
    baseline_iters: int = Field(
        200, ge=1, description="Most L-BFGS iterations of the baselines' logistic regression (scikit-learn)."
    )
    encoder: EncoderOptions | None = Field(
        None, description="Attach to a model: use one of its layers as the encoder's input."
    )
    reconstructions: int = Field(
        8, ge=0, description="Test images shown in figures/reconstructions.png (0: no figure)."
    )

    @field_validator("latents")
    @classmethod
    def _latents(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError("latent sizes must be >= 1")
        if len(set(v)) != len(v):
            raise ValueError("latent sizes must be distinct")
        return v

    @field_validator("lambdas")
    @classmethod
    def _lambdas(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= x <= 1.0 for x in v):
            raise ValueError(
                "every lambda must be in [0, 1] (0: classification only, 1: reconstruction only)"
            )
        if len(set(v)) != len(v):
            raise ValueError("lambdas must be distinct")
        return [float(x) for x in v]

    @field_validator("families")
    @classmethod
    def _families(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("families must be distinct")
        return v

    @model_validator(mode="after")
    def _vit_latents(self) -> TradeoffOptions:
        bad = [x for x in self.latents if x % 4]
        if "vit-tiny" in self.families and bad:
            raise ValueError(
                f"vit-tiny's latent size is its token width, a multiple of its 4 attention heads; "
                f"{bad} are not (use e.g. latents: [4, 8, 16])"
            )
        return self

    @model_validator(mode="after")
    def _attach_families(self) -> TradeoffOptions:
        if self.encoder is not None and "vit-tiny" in self.families:
            raise ValueError(
                "vit-tiny embeds pixels itself and cannot take another model's layer; with "
                "`encoder:` use fc-* (any layer) or cnn-* (feature-map layers)"
            )
        return self
