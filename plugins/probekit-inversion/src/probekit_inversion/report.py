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


def reconstructions_figure(run: RunContext, images: Mapping[str, torch.Tensor], names: Sequence[str]) -> None:
    """figures/reconstructions.png: rows are test images, columns the original then each depth."""
    original = images["original"]
    rows = [[original[r]] + [images[n][r] for n in names] for r in range(len(original))]
    fig = image_grid(rows, ["original", *names], title=f"Reconstructions from each depth ({run.spec.name})")
    run.save_figure(fig, "reconstructions.png")


def error_vs_depth_figure(
    run: RunContext, values: Mapping[str, Mapping[str, float]], names: Sequence[str], mode: str
) -> None:
    """figures/error_vs_depth.png: one panel per metric, x = requested layers in depth order."""
    plt = _plt()
    metrics = list(values[names[0]]) if names else []
    fig, axes = plt.subplots(
        1, max(1, len(metrics)), figsize=(3.2 * max(1, len(metrics)), 3.2), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics):
        ax.plot(range(len(names)), [values[n][metric] for n in names], "o-")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric)
        ax.set_xlabel("reconstructed from")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Reconstruction quality vs depth ({mode})", fontsize=9)
    fig.tight_layout()
    run.save_figure(fig, "error_vs_depth.png")


def add_report(
    run: RunContext, probe: Any, values: Mapping[str, Mapping[str, float]], module_loss: Mapping[str, float]
) -> None:
    names = probe.names
    metrics = list(values[names[0]]) if names else []
    lines = [
        f"Mode: **{probe.mode}**"
        + (f" (inputs: {probe.target} states)" if probe.mode == "modular" else "")
        + f"; {probe.epochs} epochs per {'module' if probe.mode == 'modular' else 'chain'}; images "
        "compared in [0, 1] after the model's normalisation is undone.",
        "",
    ]
    head = ["layer", *metrics] + (["module test loss"] if module_loss else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        cells = [f"`{n}`"] + [f"{values[n][m]:.4g}" for m in metrics]
        if module_loss:
            cells.append(f"{module_loss[n]:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Module test loss: MSE of one inverse module on cached test states, divided by the variance "
        "of its target layer (0 = perfect, 1 = no better than the mean).",
        "",
        "![reconstructions](figures/reconstructions.png)",
        "",
        "Rows are test images; the first column is the model-ready input, the others its reconstruction "
        "from each requested layer (deeper to the right).",
        "",
        "![error vs depth](figures/error_vs_depth.png)",
        "",
    ]
    if probe.chain is not None:
        lines += ["Inverse modules:", ""]
        for i, step in enumerate(probe.chain.steps):
            what = getattr(step, "description", type(step).__name__)
            lines.append(
                f"- `{probe.sites[i + 1].name}` -> `{probe.sites[i].name}`: {what}, "
                f"{sum(p.numel() for p in step.parameters()):,} parameters"
            )
        lines.append("")
    run.add_report("Feature inversion", "\n".join(lines))
