"""Attribution methods and their quality metrics, all from captum, on any probekit model adapter.

Attributions are taken with respect to the images in [0, 1] (before the adapter's
normalisation), so they live in the same space as the perturbations:

    from probekit_perturb.attribution import Attributor, infidelity_score, sensitivity_score
    attributor = Attributor(adapter, "integrated-gradients")
    attr = attributor.attribute(images, target=labels)          # same shape as images
    inf = infidelity_score(attributor, images, labels, create_perturbation("noise", std=0.05))
    sens = sensitivity_score(attributor, images, labels, create_perturbation("noise", std=0.02))

Methods: `integrated-gradients`, `saliency`, `gradient-x-input`, `occlusion`
and `grad-cam` (captum's `LayerGradCam` on a layer named by the adapter; token
layers of ViTs are laid out on their patch grid first, see `token_grid`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from probekit import Metric
from probekit_perturb._names import METHODS, method_name

__all__ = [
    "METHODS",
    "Attributor",
    "infidelity_score",
    "sensitivity_score",
    "Infidelity",
    "Sensitivity",
    "method_name",
    "token_grid",
]


def token_grid(num_tokens: int, meta: dict[str, Any] | None = None) -> tuple[int, int, int]:
    """`(prefix, h, w)`: how a token sequence splits into leading tokens (class, registers) and a grid.

    Uses the layer's meta (`grid` / `patch_grid` / `grid_size` and `prefix_tokens` /
    `num_prefix_tokens`) when the adapter gives them, else the fewest leading tokens that
    leave a square number of patches (197 -> 1 + 14 x 14).
    """
    meta = meta or {}
    grid = next((meta[k] for k in ("grid", "patch_grid", "grid_size") if k in meta), None)
    prefix = next((meta[k] for k in ("prefix_tokens", "num_prefix_tokens") if k in meta), None)
    if grid is not None:
        h, w = (int(grid), int(grid)) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
        return (num_tokens - h * w if prefix is None else int(prefix)), h, w
    for k in range(0, min(num_tokens, 16)):
        side = math.isqrt(num_tokens - k)
        if side > 0 and side * side == num_tokens - k:
            return k, side, side
    raise ValueError(
        f"cannot lay out {num_tokens} tokens on a square patch grid; give the layer's meta "
        "`grid: [h, w]` and `prefix_tokens` in the adapter"
    )


class _Grid(nn.Module):
    """Identity on a (N, D, h, w) token grid: the module captum's LayerGradCam hooks for token layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@contextmanager
def _tokens_as_grid(module: nn.Module, grid_module: _Grid, layout: tuple[int, int, int], select: Any) -> Iterator[None]:
    """Route a token layer's output through `grid_module` as a (N, D, h, w) map; values are unchanged."""
    k, h, w = layout

    def reshape(t: torch.Tensor) -> torch.Tensor:
        n, _, d = t.shape
        patches = t[:, k:].transpose(1, 2).reshape(n, d, h, w)
        patches = grid_module(patches).reshape(n, d, h * w).transpose(1, 2)
        return torch.cat([t[:, :k], patches], 1)

    def hook(mod: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return reshape(output)
        if isinstance(output, tuple):
            i = (
                select
                if isinstance(select, int)
                else next(j for j, v in enumerate(output) if isinstance(v, torch.Tensor))
            )
            return output[:i] + (reshape(output[i]),) + output[i + 1 :]
        raise TypeError(f"grad-cam: cannot lay out an output of type {type(output).__name__} as a token grid")

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class Attributor:
    """One captum attribution method bound to a model adapter (or a plain `nn.Module` classifier).

    Args:
        model: a `probekit.ModelAdapter`, or an `nn.Module` mapping images to logits.
        method: one of `METHODS`.
        layer: the adapter's layer name, for `grad-cam`.
        n_steps: integral steps of integrated gradients.
        baseline: the constant image integrated gradients and occlusion start from.
        abs: saliency returns absolute gradients (captum's default) or signed ones.
        window, stride: occlusion's square window and stride in pixels.
        internal_batch_size: batch size of the inner forward passes (integrated gradients).
    """

    def __init__(
        self,
        model: Any,
        method: str = "integrated-gradients",
        *,
        layer: str | None = None,
        n_steps: int = 32,
        baseline: float = 0.0,
        abs: bool = True,
        window: int = 4,
        stride: int | None = None,
        internal_batch_size: int | None = None,
    ):
        import captum.attr as ca

        self.adapter = model if not isinstance(model, nn.Module) else None
        self.module: nn.Module = model.model if self.adapter is not None else model
        self.method = method_name(method)
        self.layer = layer
        self.n_steps, self.baseline, self.abs = n_steps, baseline, abs
        self.window, self.stride = window, stride or window
        self.internal_batch_size = internal_batch_size
        self._grid: _Grid | None = None
        self._layout: tuple[int, int, int] | None = None
        if self.method == "integrated-gradients":
            self._algo: Any = ca.IntegratedGradients(self.forward)
        elif self.method == "saliency":
            self._algo = ca.Saliency(self.forward)
        elif self.method == "gradient-x-input":
            self._algo = ca.InputXGradient(self.forward)
        elif self.method == "occlusion":
            self._algo = ca.Occlusion(self.forward)
        else:
            self._algo = self._grad_cam(ca)

    @property
    def multiplies_by_inputs(self) -> bool:
        """Whether attributions include the input factor (global methods), as captum's infidelity asks."""
        return bool(getattr(self._algo, "multiplies_by_inputs", False))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of images in [0, 1] (through the adapter's preprocess)."""
        if self.adapter is None:
            return self.module(images)
        return self.adapter.logits(self.adapter.forward(self.adapter.preprocess(images)))

    def _grad_cam(self, ca: Any) -> Any:
        if self.adapter is None or self.layer is None:
            raise ValueError("grad-cam needs a model adapter and `layer:` (one of the adapter's layer names)")
        point = self.adapter.capture_points().get(self.layer)
        if point is None:
            raise ValueError(self.adapter.unknown_layer_message(self.layer))
        if point.input:
            raise ValueError(
                f"grad-cam: layer '{self.layer}' reads a module's input; pick a layer that is a module's output"
            )
        module = self.module.get_submodule(point.module) if point.module else self.module
        info = self.adapter.layer(self.layer)
        if len(info.shape) == 3:  # (C, H, W) feature map: what Grad-CAM was made for
            if point.select is not None and not isinstance(point.select, int):
                raise ValueError(
                    f"grad-cam: layer '{self.layer}' picks its tensor with {point.select!r}; "
                    "only plain or tuple outputs are supported"
                )
            return ca.LayerGradCam(self.forward, module)
        if len(info.shape) == 2:  # (tokens, width): ViT-style, laid out on the patch grid
            self._layout = token_grid(info.shape[0], info.meta)
            self._grid = _Grid()
            self._token_module = module
            self._select = point.select
            return ca.LayerGradCam(self.forward, self._grid)
        raise ValueError(
            f"grad-cam needs a feature map (C, H, W) or token layer (T, D); layer '{self.layer}' has shape {info.shape}"
        )

    def attribute(self, images: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
        """Attributions of `target` (class indices) to `images` (N, C, H, W), same shape as the images."""
        return self._attribute(images, target).detach()

    def _attribute(self, images: torch.Tensor, target: Any) -> torch.Tensor:
        # gradient methods want inputs that require grad (captum would set it itself, with a warning)
        images = images.detach().requires_grad_(self.method != "occlusion")
        if self.method == "integrated-gradients":
            return self._algo.attribute(
                images,
                baselines=self.baseline,
                target=target,
                n_steps=self.n_steps,
                internal_batch_size=self.internal_batch_size,
            )
        if self.method == "saliency":
            return self._algo.attribute(images, target=target, abs=self.abs)
        if self.method == "gradient-x-input":
            return self._algo.attribute(images, target=target)
        if self.method == "occlusion":
            c = images.shape[1]
            return self._algo.attribute(
                images,
                sliding_window_shapes=(c, self.window, self.window),
                strides=(c, self.stride, self.stride),
                baselines=self.baseline,
                target=target,
            )
        return self._attribute_grad_cam(images, target)

    def _attribute_grad_cam(self, images: torch.Tensor, target: Any) -> torch.Tensor:
        from captum.attr import LayerAttribution

        if self._grid is not None:
            with _tokens_as_grid(self._token_module, self._grid, self._layout, self._select):  # type: ignore[arg-type]
                cam = self._algo.attribute(images, target=target, relu_attributions=True)
        else:
            cam = self._algo.attribute(images, target=target, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="bilinear")
        # a real copy per channel: captum's metrics .view() the attributions
        return cam.expand(-1, images.shape[1], -1, -1).contiguous()

    def explanation_func(self) -> Callable[..., Any]:
        """`f(inputs, target=...) -> attributions` for captum's `sensitivity_max`."""

        def explain(inputs: Any, target: Any = None) -> Any:
            # captum hands the clean inputs over as a one-tuple and expects a tuple back
            if isinstance(inputs, tuple):
                return (self.attribute(inputs[0], target),)
            return self.attribute(inputs, target)

        return explain


def _perturb_fn(
    perturbation: Callable[..., torch.Tensor], generator: torch.Generator | None
) -> Callable[..., torch.Tensor]:
    def perturb(inputs: torch.Tensor, baselines: Any = None) -> torch.Tensor:
        return perturbation(inputs, generator=generator)

    return perturb


def infidelity_score(
    attributor: Attributor,
    images: torch.Tensor,
    target: torch.Tensor | int | None,
    perturbation: Callable[..., torch.Tensor],
    *,
    n_perturb_samples: int = 10,
    normalize: bool = False,
    generator: torch.Generator | None = None,
    attributions: torch.Tensor | None = None,
    max_examples_per_batch: int | None = None,
) -> torch.Tensor:
    """captum's `infidelity` per example (N,): E[(I . attr - (f(x) - f(x - I)))^2], I from `perturbation`.

    For global attributions (integrated gradients, gradient x input) captum divides the
    perturbation by `x - baseline`, so an exact attribution has infidelity 0 wherever
    `x != baseline`.
    """
    from captum.metrics import infidelity, infidelity_perturb_func_decorator

    if attributions is None:
        attributions = attributor.attribute(images, target)
    perturb = infidelity_perturb_func_decorator(attributor.multiplies_by_inputs)(_perturb_fn(perturbation, generator))
    baselines = None
    if attributor.multiplies_by_inputs:
        baselines = torch.full_like(images, float(attributor.baseline))
    return infidelity(
        attributor.forward,
        perturb,
        images.detach(),
        attributions.detach(),
        baselines=baselines,
        target=target,
        n_perturb_samples=n_perturb_samples,
        normalize=normalize,
        max_examples_per_batch=max_examples_per_batch,
    )


def sensitivity_score(
    attributor: Attributor,
    images: torch.Tensor,
    target: torch.Tensor | int | None,
    perturbation: Callable[..., torch.Tensor],
    *,
    n_perturb_samples: int = 10,
    generator: torch.Generator | None = None,
    max_examples_per_batch: int | None = None,
) -> torch.Tensor:
    """captum's `sensitivity_max` per example (N,): max over perturbed inputs of ||attr(x') - attr(x)|| /
    ||attr(x)||, with x' from `perturbation`."""
    from captum.metrics import sensitivity_max

    def perturb(inputs: torch.Tensor) -> torch.Tensor:
        return perturbation(inputs, generator=generator)

    return sensitivity_max(
        attributor.explanation_func(),
        images.detach(),
        perturb_func=perturb,
        n_perturb_samples=n_perturb_samples,
        target=target,
        max_examples_per_batch=max_examples_per_batch,
    )


class AttributionMetric(Metric):
    """Base of the model-bound metrics `infidelity` and `sensitivity`.

    They score an attribution method of a model, so unlike image metrics they must be
    bound to a model first: `metric.bind(adapter)`; then `update(images, labels)`
    takes images in [0, 1] and the classes to explain, and `compute()` is the mean
    over all examples seen. The perturbation is a registered one, given as
    `{"type": "noise", "std": 0.05}`.
    """

    score: Callable[..., torch.Tensor]

    def __init__(
        self,
        method: str = "integrated-gradients",
        perturbation: dict[str, Any] | None = None,
        n_perturb_samples: int = 10,
        layer: str | None = None,
        seed: int = 0,
        method_options: dict[str, Any] | None = None,
    ):
        self.method = method_name(method)
        self.perturbation_spec = dict(perturbation or {"type": "noise", "std": 0.05})
        self.n_perturb_samples = n_perturb_samples
        self.layer = layer
        self.seed = seed
        self.method_options = dict(method_options or {})
        self.attributor: Attributor | None = None
        self._perturb: Callable[..., torch.Tensor] | None = None
        self.reset()

    def bind(self, model: Any) -> AttributionMetric:
        """Attach the model (adapter or `nn.Module`) whose attributions are scored; returns `self`."""
        from probekit import create_perturbation

        spec = dict(self.perturbation_spec)
        kind = spec.pop("type")
        spec.pop("name", None)
        region = spec.pop("region", None)
        self._perturb = create_perturbation(kind, **spec)
        if region is not None:
            from probekit_perturb.perturbations import InRegion

            self._perturb = InRegion(self._perturb, region)
        self.attributor = Attributor(model, self.method, layer=self.layer, **self.method_options)
        self._generator = torch.Generator().manual_seed(self.seed)
        return self

    def reset(self) -> None:
        self._sum = 0.0
        self._count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """`pred`: images in [0, 1] (N, C, H, W); `target`: the class of each image to explain."""
        if self.attributor is None or self._perturb is None:
            raise RuntimeError(
                f"the '{self.name}' metric scores a model's attributions, so it needs the model: "
                f"call .bind(model_adapter) before update(images, labels), or use it in the "
                f"robustness probe (`probe: {{type: robustness, attribution: {{metrics: "
                f"[{self.name}]}}}}`); it does not compare a prediction with a target image"
            )
        values = self.score(
            self.attributor,
            pred,
            target,
            self._perturb,
            n_perturb_samples=self.n_perturb_samples,
            generator=self._generator,
        )
        self._sum += float(values.double().sum())
        self._count += int(values.numel())

    def compute(self) -> float:
        return self._sum / self._count if self._count else float("nan")


class Infidelity(AttributionMetric):
    """Mean captum `infidelity` of an attribution method under a perturbation (lower: more faithful)."""

    name = "infidelity"
    higher_is_better = False
    score = staticmethod(infidelity_score)


class Sensitivity(AttributionMetric):
    """Mean captum `sensitivity_max` of an attribution method under a perturbation (lower: stabler)."""

    name = "sensitivity"
    higher_is_better = False
    score = staticmethod(sensitivity_score)
