"""The `module` model adapter: any `nn.Module` from an import path (torchvision models by name included)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from probekit._adapter import Layer, ModelAdapter
from probekit._capture import CapturePoint
from probekit._checkpoint import load_state_dict
from probekit._errors import SpecError
from probekit._plugins import resolve

log = logging.getLogger("probekit.module")

#: friendly layer names of torchvision models (the names of the original papers), factory -> {name: module path}
FRIENDLY_NAMES: dict[str, dict[str, str]] = {
    "torchvision.models:alexnet": {
        "conv1": "features.0", "relu1": "features.1", "pool1": "features.2",
        "conv2": "features.3", "relu2": "features.4", "pool2": "features.5",
        "conv3": "features.6", "relu3": "features.7", "conv4": "features.8", "relu4": "features.9",
        "conv5": "features.10", "relu5": "features.11", "pool5": "features.12",
        "fc6": "classifier.1", "relu6": "classifier.2", "fc7": "classifier.4", "relu7": "classifier.5",
        "fc8": "classifier.6",
    },
}
FRIENDLY_NAMES["torchvision.models.alexnet:alexnet"] = FRIENDLY_NAMES["torchvision.models:alexnet"]

_INTERPOLATION = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "nearest-exact": "nearest"}


def torchvision_weights(fn: Any, name: Any) -> Any:
    """The torchvision weights enum member that `name` (e.g. `"IMAGENET1K_V1"`) names for the builder `fn`.

    Returns None when `fn` is not a torchvision model builder or `name` is not a string.
    """
    if not isinstance(name, str) or not getattr(fn, "__module__", "").startswith("torchvision.models"):
        return None
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(fn)
    except (ValueError, KeyError):
        return None
    try:
        return enum.verify(name)
    except (KeyError, ValueError):
        names = [w.name for w in enum] + ["DEFAULT"]
        raise SpecError(f"torchvision has no weights '{name}' for {fn.__name__}", path="model.kwargs.weights",
                        fix=f"Use one of {', '.join(names)}.") from None


def weights_preprocessing(weights: Any) -> dict[str, Any]:
    """Mean, std, input size and interpolation from a torchvision weights' transforms (no download)."""
    t = weights.transforms()
    crop = list(getattr(t, "crop_size", []) or [])
    mode = getattr(getattr(t, "interpolation", None), "value", "bilinear")
    return {"mean": tuple(float(m) for m in t.mean), "std": tuple(float(s) for s in t.std),
            "size": (int(crop[0]), int(crop[-1])) if crop else None,
            "interpolation": _INTERPOLATION.get(str(mode), "bilinear")}


def _check_signature(fn: Any, factory: str, kwargs: dict[str, Any]) -> None:
    """Refuse kwargs the factory does not take (a SpecError naming them and its parameters)."""
    import inspect

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: the call will tell
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise SpecError(f"factory '{factory}' does not take these kwargs ({exc})", path="model.kwargs",
                        fix=f"Its parameters: {signature}.") from None


class ModuleAdapter(ModelAdapter):
    """Wraps the `nn.Module` returned by `factory(**kwargs)`; layers are module paths.

    Torchvision model builders take their weights by name (`kwargs: {weights: IMAGENET1K_V1}`); the
    preprocessing (mean, std, input size) then comes from the weights' metadata unless the spec
    gives it. With a local `weights` file as well, the named weights are not downloaded: the file is
    loaded in their place and their metadata still sets the preprocessing. `weights_strict: false`
    (or a `weights_prefix`) loads a state dict that covers only part of the model, e.g. the
    convolutional `features` of AlexNet; a file that fits no parameter is refused.
    """

    type_name = "module"

    def __init__(self, factory: str, kwargs: dict[str, Any] | None = None, weights: str | Path | None = None,
                 layers: list[str] | None = None, input_shape: tuple[int, int, int] | None = None,
                 mean: list[float] | tuple[float, ...] | None = None,
                 std: list[float] | tuple[float, ...] | None = None,
                 weights_strict: bool = True, weights_prefix: str = ""):
        try:
            fn = resolve(factory)
        except (ImportError, AttributeError) as exc:
            raise SpecError(f"cannot import factory '{factory}' ({exc})", path="model.factory",
                            fix='Give "package.module:callable" of an importable package.') from None
        except Exception as exc:  # the module itself fails at import
            raise SpecError(f"importing factory '{factory}' raised {type(exc).__name__}: {exc}",
                            path="model.factory", fix="Fix the module (import it in Python to see where).") from None
        if not callable(fn):
            raise SpecError(f"factory '{factory}' is a {type(fn).__name__}, not a callable", path="model.factory",
                            fix="Point it to a function or class that builds a torch model.")
        kwargs = dict(kwargs or {})
        _check_signature(fn, factory, kwargs)
        named = torchvision_weights(fn, kwargs.get("weights"))
        prep = weights_preprocessing(named) if named is not None else {}
        if named is not None:  # the enum member; a local file stands in for it: nothing downloaded
            kwargs["weights"] = None if weights is not None else named
        try:
            model = fn(**kwargs)
        except OSError as exc:  # torchvision's download (URLError is an OSError) when offline
            raise SpecError(f"cannot download the weights {named} ({type(exc).__name__}: {exc})",
                            path="model.kwargs.weights",
                            fix="Offline, give a local copy as `weights: FILE` (keep kwargs.weights for the "
                                "preprocessing; add `weights_strict: false` when the file covers part of "
                                "the model).") from None
        except Exception as exc:  # the user's factory fails with these kwargs
            raise SpecError(f"factory '{factory}' raised {type(exc).__name__}: {exc}", path="model.kwargs",
                            fix="Check the kwargs against the factory (call it in Python to see where it "
                                "fails).") from None
        if not isinstance(model, nn.Module):
            raise SpecError(f"factory '{factory}' returned a {type(model).__name__}, not an nn.Module",
                            path="model.factory", fix="Point it to a callable that builds a torch model.")
        self.untrained: list[str] = []  # parameters the weights file left at their initial values
        if weights is not None:
            self.untrained = self._load(model, Path(weights), weights_strict, weights_prefix)
        self.model = model
        self.factory = factory
        self.weights_name = str(named) if named is not None else None
        size = prep.get("size")
        if input_shape is not None:
            c, h, w = input_shape
            self.input_shape = (int(c), int(h), int(w))
        elif size is not None:
            self.input_shape = (3, *size)
        else:
            self.input_shape = None  # set from the data by the runner
        self.mean = tuple(mean) if mean is not None else prep.get("mean", (0.0,))
        self.std = tuple(std) if std is not None else prep.get("std", (1.0,))
        self.interpolation = prep.get("interpolation", "bilinear")
        self._only = list(layers) if layers is not None else None
        self.aliases = {k: v for k, v in FRIENDLY_NAMES.get(factory, {}).items()
                        if any(n == v for n, _ in model.named_modules())}

    @staticmethod
    def _load(model: nn.Module, path: Path, strict: bool, prefix: str) -> list[str]:
        """Load a state dict; return the model's parameter names it did not cover (SpecError if it fits nothing)."""
        state = {prefix + k: v for k, v in load_state_dict(path).items()}
        own = model.state_dict()
        fitting = {k for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
        wrong_shape = [k for k in state if k in own and k not in fitting]
        unexpected = [k for k in state if k not in own]
        missing = [k for k in own if k not in state]
        fix = ("Use a state dict saved from the same architecture and kwargs"
               + ("; give `weights_prefix` when its keys lack the submodule's path (e.g. 'features.')"
                  if not prefix else "") + ".")
        if not fitting:
            raise SpecError(f"weights {path} fit no parameter of the model (keys such as {list(state)[:3]}; "
                            f"the model's are such as {list(own)[:3]})", path="model.weights", fix=fix)
        if wrong_shape:
            raise SpecError(f"weights {path} do not fit the model: wrong shapes for {wrong_shape[:5]} "
                            f"(file {tuple(state[wrong_shape[0]].shape)}, model "
                            f"{tuple(own[wrong_shape[0]].shape)})", path="model.weights", fix=fix)
        if unexpected or (missing and strict):
            raise SpecError(f"weights {path} do not fit the model: missing {missing[:5]}, unexpected "
                            f"{unexpected[:5]}", path="model.weights",
                            fix=fix + (" `weights_strict: false` loads a file that covers part of the model "
                                       "(the rest keeps its initial weights)." if missing and not unexpected else ""))
        model.load_state_dict(state, strict=False)
        if missing:
            log.info("module adapter: %s covers %d of %d tensors; left at initial values: %s", path,
                     len(fitting), len(own), ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else ""))
        return missing

    def capture_points(self) -> dict[str, CapturePoint]:
        names = [n for n, _ in self.model.named_modules() if n]
        if self._only is not None:
            paths = set(names)
            unknown = [n for n in self._only if n not in paths and n not in self.aliases]
            if unknown:
                raise SpecError(f"unknown module paths {unknown}", path="model.layers",
                                fix=f"Module paths of this model: {', '.join(names[:30])}")
            names = [self.aliases.get(n, n) for n in self._only]
        points = {n: CapturePoint(n) for n in names}
        points.update({alias: CapturePoint(path) for alias, path in self.aliases.items() if path in points})
        return points

    def layer_meta(self, name: str, shape: tuple[int, ...]) -> dict[str, Any]:
        meta: dict[str, Any] = {"module_type": type(self.model.get_submodule(self.aliases.get(name, name))).__name__}
        alias = next((a for a, p in self.aliases.items() if p == name), None)
        if alias is not None:
            meta["alias"] = alias
        untrained = sorted({k.rsplit(".", 1)[0] for k in self.untrained})
        if name in untrained:
            meta["untrained"] = True
        return meta

    def layers(self) -> list[Layer]:
        """The module paths in depth order (a friendly name, where the model has one, in `meta["alias"]`)."""
        if self.input_shape is None:
            raise ValueError("module adapter: input_shape unknown; give `input_shape: [C, H, W]` in the spec")
        return [layer for layer in super().layers() if layer.name not in self.aliases]

    def layer(self, name: str) -> Layer:
        """A layer by module path or friendly name (`conv1` of AlexNet is `features.0`)."""
        return super().layer(self.aliases.get(name, name))

    def logits(self, output: Any) -> Any:
        """Class logits; refused (TypeError) when the weights left the model's output layer untrained."""
        if self.untrained and self._output_untrained():
            raise TypeError("the model's output layer kept its initial weights (the weights file does not "
                            "cover it): its outputs are no class predictions")
        return super().logits(output)

    def _output_untrained(self) -> bool:
        last = [n for n, m in self.model.named_modules() if n and not list(m.children()) and any(
            True for _ in m.parameters(recurse=False))]
        return bool(last) and any(k.startswith(last[-1] + ".") for k in self.untrained)

    def describe_preprocessing(self) -> dict[str, Any]:
        return {**super().describe_preprocessing(), **({"weights": self.weights_name} if self.weights_name else {})}
