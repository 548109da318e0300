"""The `vit` model adapter: timm `VisionTransformer` or Hugging Face `ViTModel` /
`ViTForImageClassification`, with the same canonical layer names for both.

Canonical layers (`N` = number of blocks):

    embed          patch embedding + prefix (class) token(s) + position embedding, the input of block 0
    block.i.attn   residual stream after block i's attention sublayer (x + attn(norm1(x)))
    block.i.mlp    residual stream after block i's MLP sublayer (= the block's output)
    block.i        block i's output
    norm           the final LayerNorm over all tokens
    head           class logits (only when the model has a classifier)

Every state is read by a forward hook (or pre-hook) on the real model; the model's
own forward runs unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from probekit import PIL_INTERPOLATION, CapturePoint, ModelAdapter, SpecError, did_you_mean, load_state_dict
from probekit import load_hf_config as load_config

LOG = logging.getLogger("probekit.vit")

_TIMM_INTERP = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest", "area": "area"}


def _offline_fix(what: str) -> str:
    return (
        f"The machine cannot reach the model hub and {what} is not in the local cache. Download the weights "
        "where there is internet and give them as a local file: `weights: path/to/model.safetensors` "
        "(with `pretrained: false`), or for `source: hf` a local directory saved with save_pretrained "
        "as `name: path/to/dir`."
    )


class VitAdapter(ModelAdapter):
    """A timm or Hugging Face Vision Transformer with canonical layer names.

    Args:
        name: timm model name, or (`source="hf"`) a hub id or local directory.
        source: `"timm"` or `"hf"`.
        pretrained: load the published weights (default: `False` for timm, `True` for hf).
        weights: a local state dict to load into the model.
        kwargs: timm `create_model` kwargs, or hf config overrides.
        trust_remote_code: hf only; off unless asked for.
    """

    type_name = "vit"

    def __init__(
        self,
        name: str,
        source: str = "timm",
        pretrained: bool | None = None,
        weights: str | Path | None = None,
        kwargs: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
    ):
        self.name = name
        self.source = source
        kwargs = dict(kwargs or {})
        if source == "timm":
            self._init_timm(name, bool(pretrained), kwargs)
        elif source == "hf":
            self._init_hf(name, True if pretrained is None else pretrained, kwargs, trust_remote_code)
        else:
            raise SpecError(
                f"unknown source '{source}'", path="model.source", fix="Use `source: timm` or `source: hf`."
            )
        if weights is not None:
            self._load_weights(Path(weights))
        self.model.eval()

    # -- construction -------------------------------------------------------------------
    def _init_timm(self, name: str, pretrained: bool, kwargs: dict[str, Any]) -> None:
        import timm
        from timm.data import resolve_data_config
        from timm.models.vision_transformer import Block, ResPostBlock, VisionTransformer

        if not timm.is_model(name):
            raise SpecError(
                f"unknown timm model '{name}'.{did_you_mean(name, timm.list_models())}",
                path="model.name",
                fix="List them with `python -c \"import timm; print(timm.list_models('*vit*'))\"`.",
            )
        try:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except TypeError as exc:
            raise SpecError(
                f"timm model '{name}' does not take these kwargs ({exc})",
                path="model.kwargs",
                fix="Give VisionTransformer constructor options (img_size, patch_size, depth, "
                "embed_dim, num_heads, num_classes, in_chans, ...).",
            ) from None
        except OSError as exc:  # hub errors (offline, not cached) are OSError subclasses
            if not pretrained:
                raise
            raise SpecError(
                f"cannot download the pretrained weights of timm model '{name}' ({type(exc).__name__})",
                path="model.pretrained",
                fix=_offline_fix("it"),
            ) from None
        if not isinstance(model, VisionTransformer):
            raise SpecError(
                f"timm model '{name}' is a {type(model).__name__}, not a VisionTransformer",
                path="model.name",
                fix="The vit adapter takes the timm VisionTransformer family "
                "(vit_*, deit_*, ...); use `type: module` for other models.",
            )
        self.model = model
        in_chans = model.patch_embed.proj.in_channels
        height, width = (int(s) for s in model.patch_embed.img_size)
        # timm's data config keeps the pretrained input size even when img_size is overridden, so
        # the size comes from the model itself; mean, std and interpolation from the data config.
        cfg = resolve_data_config({}, model=model)
        self.input_shape = (in_chans, height, width)
        self.mean, self.std = _match_channels(cfg["mean"], cfg["std"], in_chans)
        self.interpolation = _TIMM_INTERP.get(cfg.get("interpolation", "bicubic"), "bicubic")
        self.patch_size = tuple(int(p) for p in model.patch_embed.patch_size)
        self.grid = tuple(int(g) for g in model.patch_embed.grid_size)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.num_classes = int(model.num_classes)

        points: dict[str, CapturePoint] = {"embed": CapturePoint("blocks.0", input=True)}
        for i, block in enumerate(model.blocks):
            if type(block) is ResPostBlock:  # post-norm: x = x + norm1(attn(x)); the mlp reads that x
                points[f"block.{i}.attn"] = CapturePoint(f"blocks.{i}.mlp", input=True)
            elif isinstance(block, Block):
                # pre-norm Block: x = x + attn(norm1(x)); then norm2 reads exactly that residual
                points[f"block.{i}.attn"] = CapturePoint(f"blocks.{i}.norm2", input=True)
            points[f"block.{i}.mlp"] = CapturePoint(f"blocks.{i}")
            points[f"block.{i}"] = CapturePoint(f"blocks.{i}")
        points["norm"] = CapturePoint("norm")
        if self.num_classes > 0:
            points["head"] = CapturePoint("")  # the model's output: the logits
        self._points = points

    def _init_hf(self, name: str, pretrained: bool, kwargs: dict[str, Any], trust_remote_code: bool) -> None:
        from transformers import AutoConfig, ViTForImageClassification, ViTModel

        local = Path(name).expanduser()
        src = str(local) if local.is_dir() else name
        config = load_config(name, model_type="vit", fix=_offline_fix(f"'{name}'"), trust_remote_code=trust_remote_code,
                             config_class=AutoConfig, overrides=kwargs)
        archs = config.architectures or []
        classify = any("ForImageClassification" in a for a in archs) or "num_labels" in kwargs
        cls = ViTForImageClassification if classify else ViTModel
        if pretrained:
            try:
                model = cls.from_pretrained(src, config=config, trust_remote_code=trust_remote_code)
            except OSError as exc:
                raise SpecError(
                    f"cannot load the weights of '{name}' ({type(exc).__name__})",
                    path="model.pretrained",
                    fix=_offline_fix(f"'{name}'"),
                ) from None
            except (RuntimeError, ValueError) as exc:  # e.g. kwargs that change a weight's shape
                raise SpecError(
                    f"the weights of '{name}' do not fit the model built with these kwargs ({exc})",
                    path="model.kwargs",
                    fix="Drop kwargs that change the architecture (num_labels, image_size, ...), "
                    "or use `pretrained: false` for random weights.",
                ) from None
        else:
            model = cls(config)
        self.model = model
        base: nn.Module = model.get_submodule("vit") if classify else model
        prefix = "vit." if classify else ""
        size = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
        patch = (
            config.patch_size if isinstance(config.patch_size, (list, tuple)) else (config.patch_size,) * 2
        )
        self.input_shape = (int(config.num_channels), int(size[0]), int(size[1]))
        self.patch_size = (int(patch[0]), int(patch[1]))
        self.grid = (self.input_shape[1] // self.patch_size[0], self.input_shape[2] // self.patch_size[1])
        self.num_prefix_tokens = 1
        self.num_classes = int(config.num_labels) if classify else 0
        self.mean, self.std, self.interpolation = _hf_preprocessing(src, self.input_shape)

        blocks_path, blocks = _find_layer_list(base)
        points: dict[str, CapturePoint] = {"embed": CapturePoint(f"{prefix}embeddings")}
        for i in range(len(blocks)):
            path = f"{prefix}{blocks_path}.{i}"
            # ViTLayer: x = x + attn(layernorm_before(x)); layernorm_after reads exactly that residual
            points[f"block.{i}.attn"] = CapturePoint(f"{path}.layernorm_after", input=True)
            points[f"block.{i}.mlp"] = CapturePoint(path)
            points[f"block.{i}"] = CapturePoint(path)
        points["norm"] = CapturePoint(f"{prefix}layernorm")
        if self.num_classes > 0:
            points["head"] = CapturePoint("", select="logits")
        self._points = points

    def _load_weights(self, path: Path) -> None:
        state = load_state_dict(path)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if (missing or unexpected) and self.source == "timm":
            # checkpoints in their original release format (or another img_size): timm's own converter
            from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

            try:
                assert isinstance(self.model, VisionTransformer)  # checked when a timm model is built
                state = checkpoint_filter_fn(state, self.model)
                missing, unexpected = self.model.load_state_dict(state, strict=False)
            except Exception:  # noqa: BLE001 - the converter fails on unrelated files; report the mismatch
                pass
        if missing or unexpected:
            raise SpecError(
                f"weights {path} do not fit {self.name}: missing {list(missing)[:5]}, "
                f"unexpected {list(unexpected)[:5]}",
                path="model.weights",
                fix="Use a state dict of the same architecture and the same kwargs "
                "(num_classes, img_size, depth, ...).",
            )

    # -- the adapter interface -----------------------------------------------------------------
    def components(self) -> list[dict[str, Any]]:
        """The model's components as the inversion study builds them.

        The patch embedding (`embed`) and the whole encoder (its last block, `block.{N-1}`), whose
        inverse has as many transformer layers and heads as the encoder.
        """
        blocks = [n for n in self.capture_points() if n.startswith("block.") and n.count(".") == 1]
        heads = getattr(getattr(self.model, "config", None), "num_attention_heads", None)
        if heads is None:
            attn: Any = self.model.get_submodule("blocks.0.attn")  # timm's Attention
            heads = attn.num_heads
        return [{"layer": "embed"}, {"layer": blocks[-1], "depth": len(blocks), "heads": int(heads)}]

    def capture_points(self) -> dict[str, CapturePoint]:
        return dict(self._points)

    def layer_kinds(self) -> dict[str, str]:
        kinds = {name: "tokens" for name in self._points}
        if "head" in kinds:
            kinds["head"] = "logits"
        return kinds

    def layer_meta(self, name: str, shape: tuple[int, ...]) -> dict[str, Any]:
        if name == "head":
            return {"num_classes": self.num_classes}
        return {
            "patch_grid": list(self.grid),
            "num_prefix_tokens": self.num_prefix_tokens,
            "patch_size": list(self.patch_size),
            "image_size": list(self.known_input_shape()[1:]),
        }

    def describe_preprocessing(self) -> dict[str, Any]:
        return {**super().describe_preprocessing(), "source": self.source, "name": self.name}


def _match_channels(mean: Any, std: Any, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel statistics for `channels` inputs (grey models trained from RGB stats use the average)."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != channels and channels == 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    elif len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    return mean, std


def _hf_preprocessing(
    src: str, input_shape: tuple[int, int, int]
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """Mean, std and interpolation from the checkpoint's image processor config.

    The model's own `image_size` fixes the input size (a ViT takes no other); a
    checkpoint without a processor config gets `ViTImageProcessor`'s defaults.
    """
    from transformers import ViTImageProcessor

    try:
        proc = ViTImageProcessor.from_pretrained(src)
    except OSError:
        LOG.warning(
            f"'{src}' has no preprocessor_config.json; using ViTImageProcessor defaults "
            "(mean 0.5, std 0.5, bilinear)"
        )
        return ((0.5,) * input_shape[0], (0.5,) * input_shape[0], "bilinear")
    size = getattr(proc, "size", None)
    height = size.get("height") if size is not None and hasattr(size, "get") else None
    width = size.get("width") if size is not None and hasattr(size, "get") else None
    if height and width and (int(height), int(width)) != tuple(input_shape[1:]):
        LOG.warning(
            f"image processor size {height}x{width} differs from the model's image_size "
            f"{input_shape[1]}x{input_shape[2]}; images are resized to the model's size"
        )
    if getattr(proc, "do_normalize", True):
        mean, std = _match_channels(proc.image_mean, proc.image_std, input_shape[0])
    else:
        mean, std = (0.0,) * input_shape[0], (1.0,) * input_shape[0]
    resample = getattr(proc, "resample", 2)
    return mean, std, PIL_INTERPOLATION.get(int(resample) if resample is not None else 2, "bilinear")


def _find_layer_list(base: nn.Module) -> tuple[str, nn.ModuleList]:
    """Path and module of the `ModuleList` of ViT layers (`layers`; `encoder.layer` before transformers 5)."""
    for path, module in base.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module)
            and all(hasattr(m, "layernorm_after") for m in module)
        ):
            return path, module
    raise SpecError(
        f"no ViT layers found in {type(base).__name__}",
        path="model.name",
        fix="Give a ViTModel or ViTForImageClassification checkpoint.",
    )
