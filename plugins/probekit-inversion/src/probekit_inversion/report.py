"""Figures and the report section of the inversion probe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from probekit import RunContext


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax: Any, image: torch.Tensor) -> None:
    """Draw one CHW image in [0, 1]."""
    arr = image.detach().cpu().float().clamp(0, 1).numpy()
    if arr.shape[0] == 1:
        ax.imshow(arr[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.transpose(arr[:3], (1, 2, 0)), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(
    rows: Sequence[Sequence[torch.Tensor]],
    col_titles: Sequence[str],
    row_titles: Sequence[str] | None = None,
    title: str = "",
) -> Any:
    """A figure of images: `rows[r][c]` at row r, column c."""
    plt = _plt()
    n_rows, n_cols = len(rows), len(col_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.5 * n_cols + 0.4, 1.5 * n_rows + 0.5), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            _show(axes[r][c], image)
            if r == 0:
                axes[r][c].set_title(col_titles[c], fontsize=8)
        if row_titles is not None:
            axes[r][0].set_ylabel(row_titles[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


#: axis labels of the image metrics
METRIC_LABELS = {
    "mse": "MSE (pixels in [0, 1])",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "lpips": "LPIPS distance",
}
#: line styles of the reconstructions
STYLES = {"direct": ("o-", "C0"), "chained": ("s--", "C1")}


def reconstructions_figure(run: RunContext, probe: Any, images: Mapping[str, torch.Tensor]) -> None:
    """figures/reconstructions.png: rows are test images; the original, then each layer's reconstruction.

    The direct reconstructions come first, then the chained ones (when both were trained).
    """
    original = images["original"]
    cols = [(f"{kind} {n}", f"{probe.label(n)}\n({kind})") for kind in probe.kinds for n in probe.names]
    rows = [[original[r]] + [images[key][r] for key, _ in cols] for r in range(len(original))]
    fig = image_grid(rows, ["original", *[title for _, title in cols]],
                     title=f"Reconstructions from each depth ({run.spec.name}): direct inverses, then the "
                     "modular chain" if len(probe.kinds) == 2 else f"Reconstructions from each depth ({run.spec.name})")
    run.save_figure(fig, "reconstructions.png")


def _depth_axis(ax: Any, probe: Any, xs: Sequence[float]) -> None:
    ax.set_xticks(xs, [probe.label(n) for n in probe.names], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("layer, at its depth in the model")
    ax.grid(alpha=0.3)


def error_vs_depth_figure(
    run: RunContext,
    probe: Any,
    values: Mapping[str, Mapping[str, Mapping[str, float]]],
    module_loss: Mapping[str, float],
    baseline: Mapping[str, float],
    errors: Mapping[tuple[str, str, str], float] | None = None,
) -> None:
    """figures/error_vs_depth.png: one panel per metric (direct and chained reconstructions, the
    mean-training-image baseline) and one for the modular inverses' own test losses.

    x is each layer's position in the model's layer list (depth-proportional); an axis whose values
    span more than a factor of 10 is logarithmic. `errors[(kind, layer, metric)]` draws 95 % intervals.
    """
    plt = _plt()
    names = probe.names
    xs = [float(probe.positions.get(n, i)) for i, n in enumerate(names)]
    metrics = list(baseline)
    panels = len(metrics) + (1 if module_loss else 0)
    fig, axes = plt.subplots(1, max(1, panels), figsize=(3.6 * max(1, panels), 3.4), squeeze=False)
    errors = errors or {}
    for ax, metric in zip(axes[0], metrics):
        shown = [baseline[metric]]
        for kind in probe.kinds:
            ys = [values[kind][n][metric] for n in names]
            err = [errors.get((kind, n, metric), 0.0) for n in names]
            style, colour = STYLES.get(kind, ("o-", "C2"))
            ax.errorbar(xs, ys, yerr=err if any(err) else None, fmt=style, color=colour, capsize=3,
                        label=f"{kind} inverse" if kind == "direct" else "modular chain")
            shown += ys
        ax.axhline(baseline[metric], color="0.5", ls=":", label="mean training image")
        positive = [v for v in shown if v == v and v > 0]
        if metric in ("mse", "lpips") and positive and max(positive) / min(positive) > 10:
            ax.set_yscale("log")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        _depth_axis(ax, probe, xs)
    if module_loss:
        ax = axes[0][len(metrics)]
        ys = [module_loss[n] for n in names]
        err = [errors.get(("module", n, "loss"), 0.0) for n in names]
        ax.errorbar(xs, ys, yerr=err if any(err) else None, fmt="^-", color="C3", capsize=3,
                    label="each module alone")
        if min(ys) > 0 and max(ys) / min(ys) > 10:
            ax.set_yscale("log")
        ax.set_ylabel("module test loss (MSE / target variance)")
        _depth_axis(ax, probe, xs)
    axes[0][0].legend(fontsize=7)
    if module_loss:
        axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"Reconstruction error vs depth ({run.spec.name})", fontsize=9)
    fig.tight_layout()
    run.save_figure(fig, "error_vs_depth.png")


def add_report(
    run: RunContext,
    probe: Any,
    values: Mapping[str, Mapping[str, Mapping[str, float]]],
    module_loss: Mapping[str, float],
    baseline: Mapping[str, float],
    accuracy: float | None,
) -> None:
    names = probe.names
    metrics = list(baseline)
    lines = [
        f"Granularity **{probe.granularity}**; inverses: {', '.join(probe.inverses)}"
        + (f" (modular inputs: {probe.target} states)" if probe.modular else "")
        + f"; at most {probe.epochs} epochs each, the epoch with the best loss on "
        f"{probe.validation:.0%} held-out training rows kept. Images are compared in [0, 1] after the "
        "model's normalisation is undone.",
        "",
    ]
    if accuracy is not None:
        lines += [f"The frozen model's test accuracy: **{accuracy:.3f}**.", ""]
    head = ["layer"] + [f"{kind} {m}" for kind in probe.kinds for m in metrics]
    head += ["module test loss"] if module_loss else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        cells = [f"`{probe.label(n)}`"] + [f"{values[kind][n][m]:.4g}" for kind in probe.kinds for m in metrics]
        if module_loss:
            cells.append(f"{module_loss[n]:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| mean training image | " + " | ".join(
        f"{baseline[m]:.4g}" for _ in probe.kinds for m in metrics) + (" | |" if module_loss else " |"))
    lines += [
        "",
        "*direct*: an inverse trained from the layer straight to pixels (what the layer holds); *chained*: "
        "the modular inverses chained from the layer down to pixels; *module test loss*: the MSE of one "
        "modular inverse on cached test states, divided by the variance of its target layer (0 = perfect, "
        "1 = no better than the mean). The last row reconstructs every image as the mean training image.",
        "",
        "![reconstructions](figures/reconstructions.png)",
        "",
        "![error vs depth](figures/error_vs_depth.png)",
        "",
    ]
    if probe.chain is not None:
        lines += ["Modular inverses:", ""]
        for i, step in enumerate(probe.chain.steps):
            what = getattr(step, "description", type(step).__name__)
            tag = f"inverse {probe.sites[i + 1].name}->{probe.sites[i].name}"
            lines.append(
                f"- `{probe.label(probe.sites[i + 1].name)}` -> `{probe.label(probe.sites[i].name)}`: {what}, "
                f"{sum(p.numel() for p in step.parameters()):,} parameters, epoch {probe.best_epoch.get(tag)} kept"
            )
        lines.append("")
    run.add_report("Feature inversion", "\n".join(lines))
