"""Built-in metrics: mse, psnr, ssim (torchmetrics) and accuracy."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from probekit._spec import Options
from probekit.hookspecs import hookimpl


class NoOptions(Options):
    pass


class RangeOptions(Options):
    data_range: float = Field(1.0, gt=0, description="Value range of the images (1.0 for [0, 1]).")


@hookimpl
def probekit_register_metrics(register: Any) -> None:
    src = "probekit.builtin._metrics"
    register("mse", f"{src}:mse", options=NoOptions, description="Mean squared error (torchmetrics).",
             higher_is_better=False, kind="image")
    register("psnr", f"{src}:psnr", options=RangeOptions,
             description="Peak signal-to-noise ratio in dB over the whole set (torchmetrics).", higher_is_better=True,
             kind="image")
    register("ssim", f"{src}:ssim", options=RangeOptions,
             description="Structural similarity, Gaussian window 11 (torchmetrics).", higher_is_better=True,
             kind="image")
    register("accuracy", f"{src}:accuracy", options=NoOptions,
             description="Top-1 accuracy of logits (or labels) against integer labels.", higher_is_better=True,
             kind="classification")
