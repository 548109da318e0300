"""Activation capture with forward hooks, by module path, on any `nn.Module`.

The model's own forward runs unchanged: hooks only record outputs, so the
returned output is identical (`torch.equal`) to an un-hooked call. Every hook
is removed when the call returns, also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Selector = Callable[[Any], torch.Tensor] | int | str | None


@dataclass(frozen=True)
class CapturePoint:
    """Where a layer's state is read.

    Attributes:
        module: dotted module path inside the model (`""` is the model itself).
        select: how to pick a tensor from the module's output: an index for
            tuples, a key for dicts / `ModelOutput`, a callable, or `None`
            (the tensor itself, the first tensor of a tuple, or
            `last_hidden_state` / the first tensor value of a dict).
        call: which call to keep when the module runs several times in one
            forward (`-1`: the last; `"all"`: every call stacked on dim 1).
        input: read the module's (first positional) input instead of its output.
    """

    module: str
    select: Selector = None
    call: int | str = -1
    input: bool = False


def _pick(value: Any, select: Selector) -> torch.Tensor:
    if callable(select):
        return select(value)
    if isinstance(value, torch.Tensor):
        if select is not None:
            raise TypeError(f"cannot select {select!r} from a tensor output")
        return value
    if isinstance(value, Mapping) or hasattr(value, "keys"):
        if isinstance(select, str):
            return value[select]
        if "last_hidden_state" in value.keys():
            return value["last_hidden_state"]
        for v in value.values():
            if isinstance(v, torch.Tensor):
                return v
        raise TypeError("no tensor found in the dict output; give CapturePoint.select")
    if isinstance(value, (tuple, list)):
        if isinstance(select, int):
            return value[select]
        for v in value:
            if isinstance(v, torch.Tensor):
                return v
        raise TypeError("no tensor found in the tuple output; give CapturePoint.select")
    raise TypeError(f"cannot capture an output of type {type(value).__name__}")


def has_inplace_ops(model: nn.Module) -> bool:
    """Whether any submodule modifies tensors in place (`inplace=True`)."""
    return any(getattr(m, "inplace", False) is True for m in model.modules())


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Call `model` on `inputs`: a tensor, a tuple of positional args, or a dict of keyword args."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def capture(
    model: nn.Module,
    inputs: Any,
    points: Mapping[str, CapturePoint | str],
    *,
    detach: bool = True,
    copy: bool | str = "auto",
    forward: Callable[[nn.Module, Any], Any] = call_model,
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run `model` on `inputs` once and return `(output, {name: tensor})`.

    Args:
        points: layer name -> `CapturePoint` (or a module path string).
        detach: detach captured tensors from the autograd graph.
        copy: clone captured tensors; `"auto"` clones when the model has
            in-place modules, which would otherwise overwrite a captured state.
            A captured tensor changed in place after capture raises an error
            instead of returning a wrong value.
        forward: how to call the model (default: `model(inputs)`).
    """
    modules = dict(model.named_modules())
    resolved: dict[str, CapturePoint] = {
        name: p if isinstance(p, CapturePoint) else CapturePoint(p) for name, p in points.items()
    }
    missing = sorted({p.module for p in resolved.values()} - set(modules))
    if missing:
        choices = ", ".join(list(n for n in modules if n)[:20])
        raise KeyError(f"no module named {missing} in {type(model).__name__}; module paths include: {choices}")
    do_copy = has_inplace_ops(model) if copy == "auto" else bool(copy)

    by_module: dict[tuple[str, bool], list[str]] = {}
    for name, point in resolved.items():
        by_module.setdefault((point.module, point.input), []).append(name)
    records: dict[str, list[torch.Tensor]] = {name: [] for name in resolved}
    versions: list[tuple[str, torch.Tensor, int]] = []

    def make_hook(names: list[str], is_input: bool) -> Callable[..., None]:
        def record(value: Any) -> None:
            for name in names:
                t = _pick(value, resolved[name].select)
                if detach:
                    t = t.detach()
                if do_copy:
                    t = t.clone()
                else:
                    versions.append((name, t, t._version))
                records[name].append(t)

        if is_input:
            def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
                record(args[0] if len(args) == 1 else args)
            return pre_hook

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            record(output)
        return hook

    handles = []
    try:
        for (path, is_input), names in by_module.items():
            module = modules[path]
            if is_input:
                handles.append(module.register_forward_pre_hook(make_hook(names, True)))
            else:
                handles.append(module.register_forward_hook(make_hook(names, False)))
        output = forward(model, inputs)
    finally:
        for h in handles:
            h.remove()

    for name, t, version in versions:
        if t._version != version:
            raise RuntimeError(
                f"layer '{name}' was modified in place after it was captured; call capture(..., copy=True)")
    result: dict[str, torch.Tensor] = {}
    for name, tensors in records.items():
        point = resolved[name]
        if not tensors:
            raise RuntimeError(f"layer '{name}': module '{point.module}' did not run in this forward")
        if point.call == "all":
            result[name] = torch.stack(tensors, dim=1)
        else:
            result[name] = tensors[int(point.call)]
    return output, result
