"""Figures, headline numbers and the report section of the tradeoff probe."""

from __future__ import annotations

from typing import Any

import numpy as np

from probekit import RunContext

MARKERS = ["o", "s", "^", "D", "v", "P"]
STYLES = ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1))]


def _curves(probe: Any) -> dict[tuple[str, int], list[dict[str, Any]]]:
    curves: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in probe.rows:
        curves.setdefault((row["family"], row["latent"]), []).append(row)
    return {k: sorted(v, key=lambda r: r["lambda"]) for k, v in curves.items()}


def summary(probe: Any) -> dict[str, Any]:
    """metrics.json: every point, the baselines, and per (family, latent) the change from the smallest
    to the largest lambda (`accuracy_drop` > 0: accuracy fell; `mse_gain` > 0: MSE fell)."""
    results: dict[str, Any] = {}
    tradeoff: dict[str, Any] = {}
    for (family, latent), rows in _curves(probe).items():
        results.setdefault(family, {})[f"L{latent}"] = {
            f"lambda={r['lambda']:g}": {k: r[k] for k in ("accuracy", "test_mse", "test_ce", "probe_accuracy")
                                        if k in r}
            for r in rows
        }
        lo, hi = rows[0], rows[-1]
        tradeoff.setdefault(family, {})[f"L{latent}"] = {
            "lambda_min": lo["lambda"],
            "lambda_max": hi["lambda"],
            "accuracy_at_lambda_min": lo["accuracy"],
            "accuracy_at_lambda_max": hi["accuracy"],
            "accuracy_drop": lo["accuracy"] - hi["accuracy"],
            "mse_at_lambda_min": lo["test_mse"],
            "mse_at_lambda_max": hi["test_mse"],
            "mse_gain": lo["test_mse"] - hi["test_mse"],
        }
    baselines: dict[str, Any] = {}
    for row in probe.baseline_rows:
        baselines.setdefault(row["family"], {})[f"L{row['latent']}"] = {
            k: row[k] for k in ("accuracy", "test_mse", "test_ce")
        }
    softened = {}
    for family, by_latent in tradeoff.items():
        if len(by_latent) > 1:
            sizes = sorted(by_latent, key=lambda k: int(k[1:]))
            softened[family] = by_latent[sizes[-1]]["accuracy_drop"] < by_latent[sizes[0]]["accuracy_drop"]
    best = max(probe.rows, key=lambda r: r["accuracy"])
    return {
        "points": len(probe.rows),
        "mse_space": "[-1, 1] pixels",
        "best_accuracy": best["accuracy"],
        "tradeoff": tradeoff,
        "larger_latent_loses_less_accuracy": softened,
        "baselines": baselines,
        "results": results,
    }


def _latent_colors(latents: list[int]) -> dict[int, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    n = max(len(latents) - 1, 1)
    return {L: cmap(0.85 * i / n) for i, L in enumerate(sorted(latents))}


def figures(run: RunContext, probe: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = _curves(probe)
    colors = _latent_colors(probe.latents)
    fam_index = {f: i for i, f in enumerate(probe.families)}
    multi = len(probe.families) > 1

    # Pareto: accuracy against reconstruction error, one curve per latent size (and family)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for (family, latent), rows in curves.items():
        i = fam_index[family]
        label = f"L={latent}" + (f" {family}" if multi else "")
        ax.plot(
            [r["test_mse"] for r in rows],
            [r["accuracy"] for r in rows],
            color=colors[latent],
            marker=MARKERS[i % len(MARKERS)],
            ls=STYLES[i % len(STYLES)],
            label=label,
        )
        for r in (rows[0], rows[-1]) if len(rows) > 4 else rows:
            ax.annotate(
                f"λ={r['lambda']:g}",
                (r["test_mse"], r["accuracy"]),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=7,
                color=colors[latent],
            )
    for row in probe.baseline_rows:
        marker = "*" if row["family"] == "pca" else "X"
        ax.scatter(
            [row["test_mse"]],
            [row["accuracy"]],
            marker=marker,
            s=90,
            color=colors[row["latent"]],
            edgecolor="black",
            linewidth=0.6,
            zorder=5,
        )
    for kind, marker in (("pca", "*"), ("random", "X")):
        if any(r["family"] == kind for r in probe.baseline_rows):
            ax.scatter(
                [], [], marker=marker, s=90, color="white", edgecolor="black", label=f"{kind} baseline"
            )
    ax.set_xlabel("test reconstruction MSE (pixels in [-1, 1]; lower is better)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Classification vs reconstruction: {run.spec.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    run.save_figure(fig, "pareto.png")

    # every measure against lambda
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for (family, latent), rows in curves.items():
        i = fam_index[family]
        lams = [r["lambda"] for r in rows]
        for ax, key in zip(axes, ("accuracy", "test_mse", "test_ce")):
            ax.plot(
                lams,
                [r[key] for r in rows],
                color=colors[latent],
                marker=MARKERS[i % len(MARKERS)],
                ls=STYLES[i % len(STYLES)],
                label=f"L={latent}" + (f" {family}" if multi else ""),
            )
    for row in probe.baseline_rows:
        if row["family"] == "pca":
            for ax, key in zip(axes, ("accuracy", "test_mse", "test_ce")):
                ax.axhline(row[key], color=colors[row["latent"]], lw=0.8, ls=(0, (1, 2)))
    for ax, title in zip(axes, ("test accuracy", "test MSE ([-1, 1] pixels)", "test cross-entropy")):
        ax.set_xlabel("λ (weight of the reconstruction loss)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if probe.baseline_rows:
        axes[1].text(0.02, 0.02, "dotted: PCA baseline", transform=axes[1].transAxes, fontsize=7)
    fig.tight_layout()
    run.save_figure(fig, "vs_lambda.png")

    _reconstructions(run, probe, plt)


def _reconstructions(run: RunContext, probe: Any, plt: Any) -> None:
    examples = getattr(probe, "examples", None)
    if examples is None or not len(examples) or not probe.recon:
        return
    from probekit_tradeoff._probe import point_name

    family = probe.families[0]
    lambdas = (
        probe.lambdas
        if len(probe.lambdas) <= 5
        else [probe.lambdas[i] for i in np.linspace(0, len(probe.lambdas) - 1, 5).round().astype(int)]
    )
    rows = [("input", examples)]
    c, h, w = examples.shape[1:]
    for latent in probe.latents:
        for lam in lambdas:
            rec = probe.recon.get(point_name(family, latent, lam))
            if rec:
                rows.append((f"L={latent} λ={lam:g}", np.asarray(rec, dtype=np.float32).reshape(-1, c, h, w)))
    k = len(examples)
    fig, axes = plt.subplots(len(rows), k, figsize=(0.9 * k + 1.2, 0.9 * len(rows)), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for j in range(k):
            ax = axes[r][j]
            img = np.clip(np.asarray(imgs[j]), 0, 1).transpose(1, 2, 0)
            ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    axes[0][0].set_title(f"test reconstructions, {family}", fontsize=9, loc="left")
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    run.save_figure(fig, "reconstructions.png")


def report_section(probe: Any, summ: dict[str, Any]) -> str:
    """Markdown: per-point table, the measured tradeoff in words, baselines, figures."""
    lines = [
        "Loss `λ·MSE + (1-λ)·CE` with gradient routing (decoder: MSE only, classifier: CE only, "
        "encoder: the λ-weighted sum). MSE is measured on pixels in [-1, 1]. "
        "All numbers are on the test split.",
        "",
        "| family | L | λ | accuracy | read-out accuracy | test MSE | test CE |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in probe.rows:
        lines.append(
            f"| {row['family']} | {row['latent']} | {row['lambda']:g} | {row['accuracy']:.4f} | "
            f"{row.get('probe_accuracy', float('nan')):.4f} | {row['test_mse']:.4f} | {row['test_ce']:.4f} |"
        )
    for row in probe.baseline_rows:
        lines.append(
            f"| {row['family']} baseline | {row['latent']} | – | {row['accuracy']:.4f} | – | "
            f"{row['test_mse']:.4f} | {row['test_ce']:.4f} |"
        )
    lines += ["", "*accuracy*: the classifier head trained with the model (the study's measure); *read-out "
              "accuracy*: a logistic regression fitted afterwards on the frozen final latent.", "",
              "**Measured tradeoff** (from the smallest to the largest λ):", ""]
    for family, by_latent in summ["tradeoff"].items():
        for latent, t in sorted(by_latent.items(), key=lambda kv: int(kv[0][1:])):
            acc = "fell" if t["accuracy_drop"] > 0 else "did not fall"
            mse = "fell" if t["mse_gain"] > 0 else "did not fall"
            lines.append(
                f"- {family}, L={latent[1:]}: accuracy {acc} from {t['accuracy_at_lambda_min']:.4f} "
                f"(λ={t['lambda_min']:g}) to {t['accuracy_at_lambda_max']:.4f} (λ={t['lambda_max']:g}), "
                f"a drop of {t['accuracy_drop']:+.4f}; test MSE {mse} from {t['mse_at_lambda_min']:.4f} "
                f"to {t['mse_at_lambda_max']:.4f}."
            )
        if family in summ["larger_latent_loses_less_accuracy"]:
            sizes = sorted(by_latent, key=lambda k: int(k[1:]))
            small, large = by_latent[sizes[0]], by_latent[sizes[-1]]
            verdict = (
                "loses less accuracy"
                if summ["larger_latent_loses_less_accuracy"][family]
                else "does NOT lose less accuracy"
            )
            lines.append(
                f"- {family}: the larger latent (L={sizes[-1][1:]}, drop {large['accuracy_drop']:+.4f}) "
                f"{verdict} across λ than the smaller one (L={sizes[0][1:]}, drop "
                f"{small['accuracy_drop']:+.4f})."
            )
    lines += [
        "",
        "![accuracy vs MSE](figures/pareto.png)",
        "",
        "![measures vs lambda](figures/vs_lambda.png)",
    ]
    if probe.recon:
        lines += ["", "![reconstructions](figures/reconstructions.png)"]
    return "\n".join(lines)
