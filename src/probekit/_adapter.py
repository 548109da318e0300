"""The model adapter: a real `nn.Module` plus canonical layer names and its input transform."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from probekit._capture import CapturePoint, call_model, capture
from probekit._data import luminance

LAYER_KINDS = ("image", "map", "tokens", "vector", "logits", "state", "other")

PIL_INTERPOLATION = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "area", 5: "bilinear"}
"""PIL resampling codes (as image-processor configs store them) -> `torch.nn.functional.interpolate` modes."""


@dataclass(frozen=True)
class Layer:
    """A probe-able layer.

    Attributes:
        name: canonical name used in specs (`block.3`, `features.3`).
        kind: `image` (CHW pixels), `map` (CHW feature map), `tokens`
            (sequence x width), `vector`, `logits`, `state` or `other`.
        shape: shape of one example's state (no batch dimension).
        module: the module path hooked to read it.
        meta: extra facts for probes (patch grid, token counts, ...).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    module: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "module": self.module,
                **({"meta": self.meta} if self.meta else {})}


def kind_of(shape: Sequence[int]) -> str:
    """A default layer kind from a per-example shape."""
    if len(shape) == 3:
        return "map"
    if len(shape) == 2:
        return "tokens"
    if len(shape) == 1:
        return "vector"
    return "other"


class ModelAdapter:
    """Base class of model adapters.

    Subclasses set `model` and `input_shape`, and implement
    `capture_points` (canonical layer name -> where to hook). The base
    class provides `capture`, `layers` (shapes found by one forward
    on a dummy batch), normalisation in `preprocess` / `postprocess`,
    and a `fingerprint` of the weights for cache keys.
    """

    model: nn.Module
    """The wrapped model from its own library."""
    input_shape: tuple[int, int, int] | None = (3, 224, 224)
    """(C, H, W) of the images the model takes; None while unknown (the `module` adapter without
    `input_shape:` takes it from the data's image shape)."""
    mean: tuple[float, ...] = (0.0,)
    """Per-channel mean that `preprocess` subtracts."""
    std: tuple[float, ...] = (1.0,)
    """Per-channel standard deviation that `preprocess` divides by."""
    interpolation: str = "bilinear"
    """Resize interpolation of `preprocess` when an image's size differs."""
    type_name: str = "model"
    """Short name of the adapter type (`module`, `vit`, ...)."""

    _layers: list[Layer] | None = None

    # -- to implement -------------------------------------------------------
    def capture_points(self) -> dict[str, CapturePoint]:
        """Canonical layer name -> `CapturePoint`, in depth order."""
        raise NotImplementedError

    def layer_kinds(self) -> dict[str, str]:
        """Optional kinds for layers whose kind cannot be told from the shape."""
        return {}

    def layer_meta(self, name: str, shape: tuple[int, ...]) -> dict[str, Any]:
        """Optional metadata of a layer (patch grid, token counts, ...)."""
        return {}

    # -- provided -----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> ModelAdapter:
        self.model.to(device)
        return self

    def forward(self, inputs: Any) -> Any:
        """Call the model on model-ready inputs."""
        return call_model(self.model, inputs)

    def logits(self, output: Any) -> torch.Tensor:
        """Class logits from a model output (for training and accuracy)."""
        if isinstance(output, torch.Tensor):
            return output
        for key in ("logits", "pred_logits"):
            if hasattr(output, key):
                return getattr(output, key)
        raise TypeError(f"{type(self).__name__}: cannot find class logits in a {type(output).__name__}")

    def known_input_shape(self) -> tuple[int, int, int]:
        """`input_shape`, or a ValueError when it is not known yet."""
        if self.input_shape is None:
            raise ValueError(f"{self.type_name} adapter: input_shape unknown; give `input_shape: [C, H, W]` in the "
                             "spec's model section")
        return self.input_shape

    def example_inputs(self, batch_size: int = 2) -> Any:
        """Model-ready inputs of the right shape (zeros through `preprocess`)."""
        return self.preprocess(torch.zeros(batch_size, *self.known_input_shape(), device=self.device))

    def layers(self) -> list[Layer]:
        """The probe-able layers in depth order, with kind and per-example shape."""
        if self._layers is None:
            points = self.capture_points()
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    _, states = capture(self.model, self.example_inputs(), points)
            finally:
                self.model.train(was_training)
            kinds = self.layer_kinds()
            layers = []
            for name, point in points.items():
                shape = tuple(states[name].shape[1:])
                layers.append(Layer(name, kinds.get(name, kind_of(shape)), shape, point.module,
                                    self.layer_meta(name, shape)))
            self._layers = layers
        return list(self._layers)

    def layer_names(self, wanted: Sequence[str] | str = "all") -> list[str]:
        """`wanted` checked against the model's layers (`"all"`: every layer, in depth order)."""
        if wanted == "all":
            return [layer.name for layer in self.layers()]
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        for name in names:
            self.layer(name)  # raises with the list of valid names
        return names

    def layer(self, name: str) -> Layer:
        for layer in self.layers():
            if layer.name == name:
                return layer
        raise KeyError(self.unknown_layer_message(name))

    def unknown_layer_message(self, name: str) -> str:
        names = [layer.name for layer in self.layers()]
        shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
        return f"unknown layer '{name}' of {self.type_name} model; its layers are: {shown}"

    def capture(self, inputs: Any, layers: Sequence[str] | None = None, **kwargs: Any
                ) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run the model once on model-ready `inputs`; return its output and the requested states.

        `layers=None` captures every layer. The output equals `self.model(inputs)`.
        """
        points = self.capture_points()
        names = list(points) if layers is None else list(layers)
        for name in names:
            if name not in points:
                raise KeyError(self.unknown_layer_message(name))
        return capture(self.model, inputs, {n: points[n] for n in names}, forward=self._forward_fn(),
                       **kwargs)

    def _forward_fn(self):  # noqa: ANN202 - small indirection so subclasses can change the call
        return lambda model, inputs: self.forward(inputs)

    # -- input transform -------------------------------------------------------
    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[1]
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)
        if mean.numel() == 1:
            mean, std = mean.expand(c), std.expand(c)
        return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (NCHW) -> model inputs: channels and size matched, then normalised."""
        x = images
        if x.dim() == 3:
            x = x.unsqueeze(0)
        c, h, w = self.known_input_shape()
        if x.shape[1] != c:
            if x.shape[1] == 1:
                x = x.expand(-1, c, -1, -1)
            elif c == 1 and x.shape[1] == 3:
                x = luminance(x)
            else:
                raise ValueError(f"{self.type_name} model takes {c}-channel images, got {x.shape[1]} channels")
        if tuple(x.shape[-2:]) != (h, w):
            antialias = self.interpolation in ("bilinear", "bicubic")
            x = F.interpolate(x, size=(h, w), mode=self.interpolation, antialias=antialias,
                              **({} if self.interpolation == "nearest" else {"align_corners": False}))
        mean, std = self._stats(x)
        return (x - mean) / std

    def postprocess(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs (or reconstructions of them) -> images in [0, 1] space (undoes the normalisation)."""
        mean, std = self._stats(inputs)
        return inputs * std + mean

    def describe_preprocessing(self) -> dict[str, Any]:
        return {"input_shape": list(self.known_input_shape()), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    def fingerprint(self) -> str:
        """A hash of the model class, its weights and the preprocessing (for cache keys)."""
        h = hashlib.sha256()
        h.update(type(self.model).__qualname__.encode())
        h.update(repr(self.describe_preprocessing()).encode())
        for name, t in self.model.state_dict().items():
            h.update(name.encode())
            t = t.detach().cpu().contiguous()
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:24]


def check_probe_layers(adapter: ModelAdapter, probe_type: str, options: Mapping[str, Any]) -> None:
    """Refuse layer names in the probe's options that the model does not have, before any training.

    A probe declares at registration which of its options name layers of the run's model
    (`layer_options`, default `("layers",)`; a dotted path reaches into sections). Raises a
    `SpecError` with the key path, e.g. `probe.layers[1]`, listing the valid names.
    """
    from probekit._errors import SpecError, did_you_mean
    from probekit._plugins import get_plugin_manager

    entry = get_plugin_manager().get("probes", probe_type)
    valid = list(adapter.capture_points())
    for option in entry.meta.get("layer_options", ("layers",)):
        value: Any = options
        for part in option.split("."):
            value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
        if value is None or value == "all":
            continue
        names = [value] if isinstance(value, str) else list(value)
        for i, name in enumerate(names):
            if name not in valid:
                where = f"probe.{option}" + ("" if isinstance(value, str) else f"[{i}]")
                shown = ", ".join(valid[:40]) + (", ..." if len(valid) > 40 else "")
                raise SpecError(f"unknown layer '{name}' of the {adapter.type_name} model; its layers are: {shown}."
                                + did_you_mean(name, valid), path=where)
