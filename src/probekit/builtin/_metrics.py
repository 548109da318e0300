from __future__ import annotations

import torch

from probekit._metric import Metric, TorchmetricsMetric


def mse() -> Metric:
    from torchmetrics import MeanSquaredError

    return TorchmetricsMetric(MeanSquaredError(), "mse", higher_is_better=False)


def psnr(data_range: float = 1.0) -> Metric:
    from torchmetrics.image import PeakSignalNoiseRatio

    return TorchmetricsMetric(PeakSignalNoiseRatio(data_range=data_range), "psnr", higher_is_better=True)


def ssim(data_range: float = 1.0) -> Metric:
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    return TorchmetricsMetric(StructuralSimilarityIndexMeasure(data_range=data_range), "ssim",
                              higher_is_better=True)


class Accuracy(Metric):
    """Top-1 accuracy; `pred` is logits (N, C) or predicted labels (N,)."""

    name = "accuracy"
    higher_is_better = True

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        labels = pred.argmax(dim=-1) if pred.dim() > 1 else pred
        self.correct += int((labels.to(target.device) == target).sum())
        self.total += int(target.numel())

    def compute(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def accuracy() -> Metric:
    return Accuracy()
