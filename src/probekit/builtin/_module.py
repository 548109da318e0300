from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from probekit._adapter import ModelAdapter
from probekit._capture import CapturePoint
from probekit._checkpoint import load_state_dict
from probekit._errors import SpecError
from probekit._plugins import resolve


class ModuleAdapter(ModelAdapter):
    """Wraps the `nn.Module` returned by `factory(**kwargs)`; layers are module paths."""

    type_name = "module"

    def __init__(self, factory: str, kwargs: dict[str, Any] | None = None, weights: str | Path | None = None,
                 layers: list[str] | None = None, input_shape: tuple[int, int, int] | None = None,
                 mean: list[float] | tuple[float, ...] = (0.0,), std: list[float] | tuple[float, ...] = (1.0,)):
        try:
            fn = resolve(factory)
        except (ImportError, AttributeError) as exc:
            raise SpecError(f"cannot import factory '{factory}' ({exc})", path="model.factory",
                            fix='Give "package.module:callable" of an importable package.') from None
        model = fn(**(kwargs or {}))
        if not isinstance(model, nn.Module):
            raise SpecError(f"factory '{factory}' returned a {type(model).__name__}, not an nn.Module",
                            path="model.factory", fix="Point it to a callable that builds a torch model.")
        if weights is not None:
            missing, unexpected = model.load_state_dict(load_state_dict(weights), strict=False)
            if missing or unexpected:
                raise SpecError(f"weights {weights} do not fit the model: missing {list(missing)[:5]}, "
                                f"unexpected {list(unexpected)[:5]}", path="model.weights",
                                fix="Use a state dict saved from the same architecture and kwargs.")
        self.model = model
        self.factory = factory
        self.input_shape = tuple(input_shape) if input_shape is not None else None  # set from data by the runner
        self.mean = tuple(mean)
        self.std = tuple(std)
        self._only = list(layers) if layers is not None else None

    def capture_points(self) -> dict[str, CapturePoint]:
        names = [n for n, _ in self.model.named_modules() if n]
        if self._only is not None:
            unknown = [n for n in self._only if n not in set(names)]
            if unknown:
                raise SpecError(f"unknown module paths {unknown}", path="model.layers",
                                fix=f"Module paths of this model: {', '.join(names[:30])}")
            names = self._only
        return {n: CapturePoint(n) for n in names}

    def layer_meta(self, name: str, shape: tuple[int, ...]) -> dict[str, Any]:
        return {"module_type": type(self.model.get_submodule(name)).__name__}

    def layers(self):  # type: ignore[override]
        if self.input_shape is None:
            raise ValueError("module adapter: input_shape unknown; give `input_shape: [C, H, W]` in the spec")
        return super().layers()
