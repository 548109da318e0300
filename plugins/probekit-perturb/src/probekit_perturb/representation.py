"""How far a representation moves under a perturbation: linear CKA, cosine, prediction flips, logit distance.

As metrics they follow the core protocol `update(pred, target)` / `compute()`
with `pred` the perturbed and `target` the clean states (or logits) of the
same examples, in the same order. States of any shape are flattened per example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from probekit import Metric


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1) if x.dim() != 2 else x


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment (Kornblith et al., 2019) of two representations of the same n examples.

    `x`: (n, ...) and `y`: (n, ...), flattened per example. Returns a value in [0, 1];
    1 when `y` is `x` up to an orthogonal transform and isotropic scaling. Computed in
    float64, in feature space or through n x n Gram matrices, whichever is smaller.
    """
    x, y = _flat(x).double(), _flat(y).double()
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs the same examples in both: got {x.shape[0]} and {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise ValueError("linear_cka needs at least 2 examples")
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    n = x.shape[0]
    if max(x.shape[1], y.shape[1]) <= n:
        cross = torch.linalg.matrix_norm(y.T @ x) ** 2
        norm_x = torch.linalg.matrix_norm(x.T @ x)
        norm_y = torch.linalg.matrix_norm(y.T @ y)
    else:
        k, l_ = x @ x.T, y @ y.T
        cross = (k * l_).sum()
        norm_x, norm_y = torch.linalg.matrix_norm(k), torch.linalg.matrix_norm(l_)
    denom = norm_x * norm_y
    if float(denom) == 0.0:
        return float("nan")  # a constant representation has no alignment to measure
    return float(cross / denom)


class CKA(Metric):
    """Linear CKA between perturbed (`pred`) and clean (`target`) states over all examples seen.

    CKA is not a mean over batches, so the flattened states are kept (in `dtype`, on
    the CPU) until `compute`.
    """

    name = "cka"
    higher_is_better = True

    def __init__(self, dtype: str = "float32"):
        self.dtype = getattr(torch, dtype)
        self.reset()

    def reset(self) -> None:
        self._x: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape[0] != target.shape[0]:
            raise ValueError(f"cka: {pred.shape[0]} perturbed vs {target.shape[0]} clean examples")
        self._x.append(_flat(target.detach()).to("cpu", self.dtype))
        self._y.append(_flat(pred.detach()).to("cpu", self.dtype))

    def compute(self) -> float:
        if not self._x:
            return float("nan")
        return linear_cka(torch.cat(self._x), torch.cat(self._y))


class Cosine(Metric):
    """Mean per-example cosine similarity between perturbed and clean states (flattened)."""

    name = "cosine"
    higher_is_better = True

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sum = 0.0
        self._count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        c = F.cosine_similarity(_flat(pred.detach()).double(), _flat(target.detach()).double(), dim=1)
        self._sum += float(c.sum())
        self._count += int(c.numel())

    def compute(self) -> float:
        return self._sum / self._count if self._count else float("nan")


class FlipRate(Metric):
    """Share of examples whose predicted class (argmax of logits) changes under the perturbation."""

    name = "flip_rate"
    higher_is_better = False

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._flips = 0
        self._count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self._flips += int((pred.argmax(-1) != target.argmax(-1).to(pred.device)).sum())
        self._count += int(pred.shape[0])

    def compute(self) -> float:
        return self._flips / self._count if self._count else float("nan")


class LogitDistance(Metric):
    """Mean Euclidean distance between perturbed and clean logits (`relative`: over the clean norm)."""

    name = "logit_distance"
    higher_is_better = False

    def __init__(self, relative: bool = False) -> None:
        self.relative = relative
        self.reset()

    def reset(self) -> None:
        self._sum = 0.0
        self._count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p, t = _flat(pred.detach()).double(), _flat(target.detach()).double().to(pred.device)
        d = (p - t).norm(dim=1)
        if self.relative:
            d = d / t.norm(dim=1).clamp_min(1e-12)
        self._sum += float(d.sum())
        self._count += int(d.numel())

    def compute(self) -> float:
        return self._sum / self._count if self._count else float("nan")
