"""The metric protocol: streaming, device-agnostic, (prediction, target) in image space."""

from __future__ import annotations

from typing import Any

import torch


class Metric:
    """Base class of metrics.

    `update(pred, target)` accumulates a batch, `compute()` returns the value
    over everything seen since the last `reset()`. Image metrics take images in
    [0, 1], NCHW, before any model normalisation.
    """

    name: str = "metric"
    higher_is_better: bool = False

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> float:
        """The value on one batch alone (resets first)."""
        self.reset()
        self.update(pred, target)
        return self.compute()


class TorchmetricsMetric(Metric):
    """Wraps a `torchmetrics.Metric` (which does the maths), moving it to the inputs' device."""

    def __init__(self, metric: Any, name: str, higher_is_better: bool):
        self._metric = metric
        self.name = name
        self.higher_is_better = higher_is_better

    def reset(self) -> None:
        self._metric.reset()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if self._metric.device != pred.device:
            self._metric = self._metric.to(pred.device)
        self._metric.update(pred.detach(), target.detach())

    def compute(self) -> float:
        return float(self._metric.compute())
