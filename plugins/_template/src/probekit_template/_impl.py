from __future__ import annotations

from typing import Any

import torch

from probekit import Metric, Probe, RunContext


class MeanAbsoluteError(Metric):
    """Streaming mean absolute error."""

    name = "mae"
    higher_is_better = False

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.total += float((pred - target).abs().sum())
        self.count += target.numel()

    def compute(self) -> float:
        return self.total / self.count if self.count else float("nan")


class NormsProbe(Probe):
    """Mean L2 norm of each layer's per-example state, from the feature cache."""

    def __init__(self, layers: list[str]):
        self.layers = layers

    def evaluate(self, run: RunContext) -> dict[str, Any]:
        feats = run.features(self.layers, "test")
        norms = {}
        for name in self.layers:
            values = [b[name].flatten(1).norm(dim=1) for b in feats.batches(256, names=[name])]
            norms[name] = float(torch.cat(values).mean())
        run.write_csv("results.csv", [{"layer": n, "metric": "norm", "value": v} for n, v in norms.items()],
                      ["layer", "metric", "value"])
        run.add_report("Layer norms", "\n".join(f"- `{n}`: {v:.4f}" for n, v in norms.items()))
        return {"norm": norms}
