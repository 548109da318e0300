"""The `detr` model adapter: Hugging Face `DetrForObjectDetection` with canonical layer names.

Canonical layers (`E` encoder layers, `D` decoder layers):

    backbone      CNN feature map after DETR's 1x1 input projection, (d_model, h, w)
    encoder.i     output of encoder layer i, (h*w tokens, d_model)
    decoder.i     output of decoder layer i, (num_queries, d_model); the last one, decoder.{D-1}, is the
                  decoder's output after its final LayerNorm (what the heads read; transformers'
                  `decoder_hidden_states[-1]`)
    head          per object query: the class logits (num_labels + 1, the last is "no object") followed by
                  the 4 box coordinates (cx, cy, w, h in [0, 1]), (num_queries, num_labels + 5)

All states are read by forward hooks on the real model (`head` from the model's
own output object); the model's forward runs unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from probekit import PIL_INTERPOLATION, CapturePoint, ModelAdapter, SpecError, load_state_dict
from probekit import load_hf_config as load_config

LOG = logging.getLogger("probekit.detr")

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: image size used for the layer shapes when the processor's aspect-keeping resize is used
NOMINAL_IMAGE = (480, 640)


def head_state(output: Any) -> torch.Tensor:
    """`head` state from a DETR output: class logits and boxes concatenated per query."""
    return torch.cat([output.logits, output.pred_boxes], dim=-1)


def _offline_fix(name: str) -> str:
    return (
        f"The machine cannot reach the model hub and '{name}' is not in the local cache. Download it where "
        f"there is internet (`hf download {name} --local-dir DIR`, or DetrForObjectDetection.from_pretrained"
        "(...).save_pretrained(DIR) plus the image processor) and give `name: DIR`; or give a state dict "
        "as `weights: FILE` with `pretrained: false`."
    )


class DetrAdapter(ModelAdapter):
    """A Hugging Face `DetrForObjectDetection` with canonical layer names.

    Args:
        name: hub id or local directory; `None` builds a random DETR from `config`.
        pretrained: load the checkpoint's weights (default: when `name` is given).
        weights: a local state dict to load.
        config: `DetrConfig` overrides.
        size: fixed `(H, W)` input size (stretch, no padding); `None` follows the image processor
            (shortest edge / longest edge, aspect ratio kept).
        trust_remote_code: passed to transformers; off unless asked for.
    """

    type_name = "detr"
    fixed_size: tuple[int, int] | None = None
    """The fixed (H, W) input size, or None to follow the image processor's resize rule."""
    processor_size: tuple[int, int]
    """The image processor's fixed (H, W), when it has one instead of a shortest-edge rule."""

    def __init__(
        self,
        name: str | None = None,
        pretrained: bool | None = None,
        weights: str | Path | None = None,
        config: dict[str, Any] | None = None,
        size: tuple[int, int] | list[int] | None = None,
        trust_remote_code: bool = False,
    ):
        from transformers import DetrConfig, DetrForObjectDetection

        self.name = name
        overrides = dict(config or {})
        pretrained = name is not None if pretrained is None else pretrained
        src = None
        if name is not None:
            local = Path(name).expanduser()
            src = str(local) if local.is_dir() else name
            cfg = load_config(name, model_type="detr", fix=_offline_fix(name), trust_remote_code=trust_remote_code,
                              config_class=DetrConfig, overrides=overrides)
        else:
            try:
                cfg = DetrConfig(**overrides)
            except (TypeError, ValueError) as exc:
                raise SpecError(
                    f"invalid DETR config ({exc})",
                    path="model.config",
                    fix="Give DetrConfig options (d_model, encoder_layers, ...).",
                ) from None
        if pretrained:
            try:
                model = DetrForObjectDetection.from_pretrained(
                    src, config=cfg, trust_remote_code=trust_remote_code
                )
            except OSError as exc:
                raise SpecError(
                    f"cannot load the weights of DETR '{name}' ({type(exc).__name__})",
                    path="model.pretrained",
                    fix=_offline_fix(str(name)),
                ) from None
        else:
            model = DetrForObjectDetection(cfg)
        if weights is not None:
            missing, unexpected = model.load_state_dict(load_state_dict(weights), strict=False)
            if missing or unexpected:
                raise SpecError(
                    f"weights {weights} do not fit this DETR: missing {list(missing)[:5]}, "
                    f"unexpected {list(unexpected)[:5]}",
                    path="model.weights",
                    fix="Use a state dict of the same architecture and config.",
                )
        self.model = model.eval()
        self.config = cfg
        self.num_queries = int(cfg.num_queries)
        self.num_logits = int(cfg.num_labels) + 1
        self._read_processor(src)
        self.fixed_size = (int(size[0]), int(size[1])) if size is not None else None
        if self.fixed_size is not None:
            self.input_shape = (int(cfg.num_channels), *self.fixed_size)
        else:
            self.input_shape = (int(cfg.num_channels), *self.resize_shape(*NOMINAL_IMAGE))
        self._spatial: tuple[int, int] | None = None

    def _read_processor(self, src: str | None) -> None:
        """Mean, std, interpolation and the resize rule from the checkpoint's image processor config."""
        self.mean, self.std = _IMAGENET
        self.interpolation = "bilinear"
        self.shortest_edge: int | None = 800
        self.longest_edge: int | None = 1333
        if src is None:
            return
        from transformers import DetrImageProcessor

        try:
            proc = DetrImageProcessor.from_pretrained(src)
        except OSError:
            LOG.warning(
                f"'{src}' has no preprocessor_config.json; using DetrImageProcessor defaults "
                "(ImageNet mean/std, bilinear, shortest edge 800, longest 1333)"
            )
            return
        if getattr(proc, "do_normalize", True):
            self.mean = tuple(float(m) for m in proc.image_mean)
            self.std = tuple(float(s) for s in proc.image_std)
        else:
            self.mean, self.std = (0.0,) * 3, (1.0,) * 3
        resample = getattr(proc, "resample", 2)
        self.interpolation = PIL_INTERPOLATION.get(int(resample) if resample is not None else 2, "bilinear")
        size = proc.size
        shortest = size.get("shortest_edge") if hasattr(size, "get") else None
        if shortest:
            self.shortest_edge, self.longest_edge = int(shortest), size.get("longest_edge")
        elif hasattr(size, "get") and size.get("height") and size.get("width"):
            self.shortest_edge = None  # a processor with a fixed size
            self.processor_size = (int(size["height"]), int(size["width"]))

    # -- input transform -------------------------------------------------------------------
    def resize_shape(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) an image of `height` x `width` is resized to."""
        if self.fixed_size is not None:
            return self.fixed_size
        if self.shortest_edge is None:
            return self.processor_size
        from transformers.image_transforms import get_size_with_aspect_ratio

        h, w = get_size_with_aspect_ratio((height, width), self.shortest_edge, self.longest_edge)
        return int(h), int(w)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> `pixel_values`: resized (to `size`, or by the processor rule), normalised.

        A batch shares one size, so no padding is needed and the pixel mask is all ones
        (DETR's default when none is passed).
        """
        x = images.unsqueeze(0) if images.dim() == 3 else images
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"detr model takes RGB images, got {x.shape[1]} channels")
        h, w = self.resize_shape(x.shape[-2], x.shape[-1])
        if tuple(x.shape[-2:]) != (h, w):
            antialias = self.interpolation in ("bilinear", "bicubic")
            x = F.interpolate(
                x,
                size=(h, w),
                mode=self.interpolation,
                antialias=antialias,
                **({} if self.interpolation in ("nearest", "area") else {"align_corners": False}),
            )
        mean, std = self._stats(x)
        return (x - mean) / std

    def forward(self, inputs: Any) -> Any:
        """`model(pixel_values=...)`; a dict of model kwargs (with `pixel_mask`) is passed through."""
        if isinstance(inputs, dict):
            return self.model(**inputs)
        return self.model(pixel_values=inputs)

    def logits(self, output: Any) -> torch.Tensor:
        return output.logits

    def describe_preprocessing(self) -> dict[str, Any]:
        return {
            **super().describe_preprocessing(),
            "size": list(self.fixed_size) if self.fixed_size else None,
            "shortest_edge": self.shortest_edge,
            "longest_edge": self.longest_edge,
        }

    # -- layers ----------------------------------------------------------------------------
    def components(self) -> list[dict[str, Any]]:
        """The model's components as the inversion study builds them.

        The backbone (after the input projection), the encoder (its last layer), the decoder (its
        output) and the prediction head; the transformer inverses of encoder and decoder have as many
        layers and heads as the model's.
        """
        n_enc, n_dec = self._layer_count("model.encoder.layers"), self._layer_count("model.decoder.layers")
        cfg = self.config
        return [
            {"layer": "backbone"},
            {"layer": f"encoder.{n_enc - 1}", "depth": n_enc, "heads": int(cfg.encoder_attention_heads)},
            {"layer": f"decoder.{n_dec - 1}", "depth": n_dec, "heads": int(cfg.decoder_attention_heads)},
            {"layer": "head"},
        ]

    def _layer_count(self, path: str) -> int:
        """The number of layers in the model's `ModuleList` at `path` (e.g. `model.encoder.layers`)."""
        layers = self.model.get_submodule(path)
        if not isinstance(layers, torch.nn.ModuleList):
            raise TypeError(f"DETR: {path} is a {type(layers).__name__}, not the ModuleList of layers")
        return len(layers)

    def capture_points(self) -> dict[str, CapturePoint]:
        points = {"backbone": CapturePoint("model.input_projection")}
        for i in range(self._layer_count("model.encoder.layers")):
            points[f"encoder.{i}"] = CapturePoint(f"model.encoder.layers.{i}")
        n = self._layer_count("model.decoder.layers")
        for i in range(n - 1):
            points[f"decoder.{i}"] = CapturePoint(f"model.decoder.layers.{i}")
        # the decoder's output is its final LayerNorm (the last call, also with auxiliary_loss)
        points[f"decoder.{n - 1}"] = CapturePoint("model.decoder.layernorm", call=-1)
        points["head"] = CapturePoint("", select=head_state)
        return points

    def layer_kinds(self) -> dict[str, str]:
        kinds = {name: "tokens" for name in self.capture_points()}
        kinds.update(backbone="map", head="logits")
        return kinds

    def layer_meta(self, name: str, shape: tuple[int, ...]) -> dict[str, Any]:
        if name == "backbone":
            self._spatial = (int(shape[1]), int(shape[2]))
        if self._spatial is None:  # layers() reads the backbone first; this is for direct calls
            with torch.no_grad():
                _, states = self.capture(self.example_inputs(1), ["backbone"])
            h, w = states["backbone"].shape[2:]
            self._spatial = (int(h), int(w))
        h, w = self._spatial
        meta: dict[str, Any] = {
            "input_size": list(self.known_input_shape()[1:]),
            "spatial_shape": [h, w],
            "encoder_tokens": h * w,
            "object_queries": self.num_queries,
        }
        if name == "head":
            meta.update(
                num_logits=self.num_logits,
                box_dims=4,
                layout="per query: num_labels + 1 class logits (last: no object), then boxes cx, cy, w, h",
            )
        return meta
