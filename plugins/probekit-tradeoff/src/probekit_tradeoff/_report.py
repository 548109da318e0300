"""The tradeoff's λ curves over seeds: summary numbers, findings, figures and the report section.

One code path for one seed and many: `Curves` holds, per (family, latent size L), every λ's
accuracy, MSE, CE and read-out accuracy as `probekit.Interval`s (n = 1 for one seed), the peaks of
each seed's curve (`peaks`) combined over seeds, the linear and trivial baselines. A run of one seed
builds it from its own rows (`evaluate`); a run with `seeds:` from the combined `results.csv`
(`summarize`). Findings go through `probekit.compare`, so with one seed they say "not tested".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from probekit import Interval, RunContext, baseline_warning, compare

MARKERS = ["o", "s", "^", "D", "v", "P"]
STYLES = ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1))]
MEASURES = ("accuracy", "test_mse", "test_ce", "readout_accuracy")
#: per-seed numbers of one (family, L) curve that `peaks` computes (combined over seeds as intervals)
PEAK_KEYS = ("best_lambda", "best_accuracy", "accuracy_at_lambda_min", "accuracy_at_lambda_max",
             "rise_to_best", "drop_from_best", "lowest_mse_lambda", "mse_at_lambda_min",
             "mse_at_lambda_max", "mse_gain")
TRIVIAL = "trivial"  # family of the trivial-baseline row: majority class, mean training image


def peaks(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The shape of one seed's λ curve of one (family, L), `rows` sorted by λ.

    `best_lambda` is the λ of the highest accuracy (the smallest such λ on a tie); `drop_from_best`
    is the accuracy lost from it to the largest λ (usually 1: reconstruction only), `rise_to_best`
    the accuracy gained from the smallest λ (usually 0: classification only) to it; `mse_gain` is
    how much the MSE falls from the smallest to the largest λ.
    """
    best = max(rows, key=lambda r: r["accuracy"])
    lo, hi = rows[0], rows[-1]
    low_mse = min(rows, key=lambda r: r["test_mse"])
    return {
        "best_lambda": best["lambda"],
        "best_accuracy": best["accuracy"],
        "accuracy_at_lambda_min": lo["accuracy"],
        "accuracy_at_lambda_max": hi["accuracy"],
        "rise_to_best": best["accuracy"] - lo["accuracy"],
        "drop_from_best": best["accuracy"] - hi["accuracy"],
        "lowest_mse_lambda": low_mse["lambda"],
        "mse_at_lambda_min": lo["test_mse"],
        "mse_at_lambda_max": hi["test_mse"],
        "mse_gain": lo["test_mse"] - hi["test_mse"],
    }


@dataclass
class Curve:
    """One (family, L): per λ, each measure's interval over seeds; the peaks' intervals."""

    family: str
    latent: int
    lambdas: list[float]
    measures: dict[str, list[Interval]]
    peaks: dict[str, Interval]
    seed_peaks: list[dict[str, float]] = field(default_factory=list)  # `peaks` of each seed, in seed order

    def at(self, measure: str, lam: float) -> Interval:
        """The interval of `measure` at `lam`."""
        return self.measures[measure][self.lambdas.index(lam)]

    @property
    def mean_peak(self) -> float:
        """The λ where the mean accuracy over seeds is highest (the smallest such λ)."""
        means = [iv.mean for iv in self.measures["accuracy"]]
        return self.lambdas[int(np.argmax(means))]


@dataclass
class Curves:
    """Everything the summary, findings, figures and report need, for one seed or several."""

    seeds: list[int]
    curves: dict[tuple[str, int], Curve]
    baselines: dict[tuple[str, int], dict[str, Interval]] = field(default_factory=dict)
    trivial: dict[str, Interval] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> Curves:
        """Build from per-seed rows (`seed`, `family`, `latent`, `lambda` and the measures); baseline rows
        have no `lambda`, the trivial row (family `trivial`) no `latent` either."""
        seeds = sorted({int(r["seed"]) for r in rows})
        points: dict[tuple[str, int], dict[int, list[dict[str, Any]]]] = {}
        base: dict[tuple[str, int], dict[str, list[float | None]]] = {}  # None: missing (Interval.of skips it)
        trivial: dict[str, list[float | None]] = {}
        for r in rows:
            if r["family"] == TRIVIAL:
                for m in ("accuracy", "test_mse", "test_ce"):
                    trivial.setdefault(m, []).append(_num(r[m]))
            elif _num(r.get("lambda")) is None:
                slot = base.setdefault((r["family"], int(r["latent"])), {})
                for m in ("accuracy", "test_mse", "test_ce"):
                    slot.setdefault(m, []).append(_num(r[m]))
            else:
                row = {k: (_num(r.get(k)) if k != "family" else r[k]) for k in ("family", "lambda", *MEASURES)}
                points.setdefault((r["family"], int(r["latent"])), {}).setdefault(int(r["seed"]), []).append(row)
        curves = {}
        for (family, latent), by_seed in points.items():
            for rs in by_seed.values():
                rs.sort(key=lambda r: r["lambda"])
            lambdas = sorted({r["lambda"] for rs in by_seed.values() for r in rs})
            measures = {
                m: [Interval.of(r[m] for rs in by_seed.values() for r in rs if r["lambda"] == lam and r[m] is not None)
                    for lam in lambdas]
                for m in MEASURES
            }
            per_seed = [peaks(by_seed[s]) for s in sorted(by_seed) if len(by_seed[s]) == len(lambdas)]
            curves[(family, latent)] = Curve(family, latent, lambdas, measures,
                                             {k: Interval.of(p[k] for p in per_seed) for k in PEAK_KEYS}, per_seed)
        families = list(dict.fromkeys(f for f, _ in points))  # the spec's order; latent sizes ascending
        curves = {k: curves[k] for k in sorted(curves, key=lambda k: (families.index(k[0]), k[1]))}
        baselines = {k: {m: Interval.of(v) for m, v in base[k].items()} for k in sorted(base)}
        return cls(seeds, curves, baselines, {m: Interval.of(v) for m, v in trivial.items()})

    def families(self) -> list[str]:
        return list(dict.fromkeys(f for f, _ in self.curves))

    def latents(self, family: str) -> list[int]:
        return sorted(L for f, L in self.curves if f == family)


def _num(x: Any) -> float | None:
    if x is None or x == "":
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


# -- summary and findings ---------------------------------------------------------------------------
def findings(c: Curves) -> dict[str, Any]:
    """Per family: the findings of the study, each as `probekit.compare`'s sentence and flags.

    - `accuracy_falls_to_lambda_max` (per L): accuracy at the mean curve's peak vs at the largest λ;
    - `mse_falls_with_lambda` (per L): MSE at the smallest vs at the largest λ;
    - `larger_latent_loses_less_accuracy`: the drop from the best λ to the largest λ of the largest L
      vs that of the smallest L (each seed's drop from its own best λ).
    """
    out: dict[str, Any] = {}
    for family in c.families():
        sizes = c.latents(family)
        fam: dict[str, Any] = {}
        for L in sizes:
            cv = c.curves[(family, L)]
            peak, lo, hi = cv.mean_peak, cv.lambdas[0], cv.lambdas[-1]
            acc = compare(cv.at("accuracy", peak), cv.at("accuracy", hi), a_name=f"accuracy at λ={peak:g}",
                          b_name=f"at λ={hi:g}")
            mse = compare(cv.at("test_mse", lo), cv.at("test_mse", hi), a_name=f"MSE at λ={lo:g}",
                          b_name=f"at λ={hi:g}", digits=4)
            fam[f"L{L}"] = {
                "accuracy_falls_to_lambda_max": _finding(acc, acc.difference > 0),
                "mse_falls_with_lambda": _finding(mse, mse.difference > 0),
            }
        if len(sizes) > 1:
            small, large = c.curves[(family, sizes[0])], c.curves[(family, sizes[-1])]
            f = compare(large.peaks["drop_from_best"], small.peaks["drop_from_best"],
                        a_name=f"accuracy drop at L={sizes[-1]}", b_name=f"at L={sizes[0]}")
            fam["larger_latent_loses_less_accuracy"] = _finding(f, f.difference < 0)
        out[family] = fam
    return out


def _finding(f: Any, direction: bool) -> dict[str, Any]:
    """A finding for metrics.json: `holds` is true when the direction is right and the 95 % intervals
    separate, false when the intervals separate the other way, None when not separated or not tested."""
    holds = (direction if f.separated else None)
    return {"text": f.text, "difference": f.difference, "separated": f.separated, "tested": f.tested,
            "holds": holds}


def summary(c: Curves, *, intervals: bool) -> dict[str, Any]:
    """The curves' numbers: per family and L, every λ's measures (`"lambda=0.5": {accuracy, ...}`) and
    the curve's `peaks`; the linear and trivial baselines. With `intervals`, every number is
    `{mean, std, ci95, n}` over the seeds (summary.json), otherwise the plain value (one seed's
    metrics.json, which `seeds:` combines over the seeds by itself)."""

    def num(iv: Interval) -> Any:
        return iv.as_dict() if intervals else iv.mean

    curves: dict[str, Any] = {}
    for (family, L), cv in c.curves.items():
        entry: dict[str, Any] = {f"lambda={lam:g}": {m: num(cv.measures[m][i]) for m in MEASURES}
                                 for i, lam in enumerate(cv.lambdas)}
        entry["peaks"] = {k: num(iv) for k, iv in cv.peaks.items()}
        if intervals:
            entry["mean_curve_peak_lambda"] = cv.mean_peak
            entry["best_lambda_per_seed"] = [p["best_lambda"] for p in cv.seed_peaks]
        curves.setdefault(family, {})[f"L{L}"] = entry
    return {
        "points": sum(len(cv.lambdas) for cv in c.curves.values()),
        "mse_space": "[-1, 1] pixels",
        "best_accuracy": max(iv.mean for cv in c.curves.values() for iv in cv.measures["accuracy"]),
        "curves": curves,
        "baselines": {kind: {f"L{L}": {m: num(iv) for m, iv in d.items()}
                             for (k2, L), d in c.baselines.items() if k2 == kind}
                      for kind in dict.fromkeys(k for k, _ in c.baselines)},
        "trivial": {m: num(iv) for m, iv in c.trivial.items()},
    }


def warnings_for(c: Curves) -> list[str]:
    """Points not clearly better than the trivial baseline at what they were trained for: accuracy
    against the majority class where λ < 1, MSE against the mean training image where λ > 0."""
    out = []
    for (family, L), cv in c.curves.items():
        for i, lam in enumerate(cv.lambdas):
            name = f"{family} L={L} λ={lam:g}"
            if lam < 1 and "accuracy" in c.trivial:
                w = baseline_warning(f"{name} accuracy", cv.measures["accuracy"][i], c.trivial["accuracy"],
                                     baseline_name="the majority class")
                out += [w] if w else []
            if lam > 0 and "test_mse" in c.trivial:
                w = baseline_warning(f"{name} test MSE", cv.measures["test_mse"][i], c.trivial["test_mse"],
                                     higher_is_better=False, baseline_name="the mean training image")
                out += [w] if w else []
    return out


# -- figures -------------------------------------------------------------------------------------
def _latent_colors(latents: list[int]) -> dict[int, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    n = max(len(latents) - 1, 1)
    return {L: cmap(0.85 * i / n) for i, L in enumerate(sorted(latents))}


def _err(ivs: list[Interval]) -> list[float] | None:
    """Error-bar half-widths (95 % CI), or None with one seed."""
    return [iv.ci95 for iv in ivs] if all(iv.n > 1 for iv in ivs) else None


def _subtitle(c: Curves) -> str:
    if len(c.seeds) > 1:
        return f"mean of {len(c.seeds)} seeds {c.seeds}; bars: 95 % confidence intervals"
    return f"one seed ({c.seeds[0]}): no intervals"


def figures(run: RunContext, c: Curves, title: str) -> None:
    """`pareto.png`, `vs_lambda.png` and (with several latent sizes) `accuracy_drop.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = c.families()
    colors = _latent_colors(sorted({L for _, L in c.curves}))
    fam_index = {f: i for i, f in enumerate(families)}
    multi = len(families) > 1

    def label(family: str, L: int) -> str:
        return f"L={L}" + (f" {family}" if multi else "")

    # accuracy against reconstruction error, one curve per latent size (and family), λ along it
    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    for (family, L), cv in c.curves.items():
        i = fam_index[family]
        acc, mse = cv.measures["accuracy"], cv.measures["test_mse"]
        ax.errorbar([iv.mean for iv in mse], [iv.mean for iv in acc], xerr=_err(mse), yerr=_err(acc),
                    color=colors[L], marker=MARKERS[i % len(MARKERS)], ls=STYLES[i % len(STYLES)], ms=5,
                    capsize=2, lw=1.3, label=label(family, L))
        for k, (lam, a, m) in enumerate(zip(cv.lambdas, acc, mse)):
            # right-above and left-below in turn: neighbouring λ often lie close together along the curve
            ax.annotate(f"λ={lam:g}", (m.mean, a.mean), textcoords="offset points",
                        xytext=(5, 4) if k % 2 == 0 else (-5, -10), ha="left" if k % 2 == 0 else "right",
                        fontsize=6.5, color=colors[L], zorder=6,
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    for (kind, L), d in c.baselines.items():
        ax.scatter([d["test_mse"].mean], [d["accuracy"].mean], marker="*" if kind == "pca" else "X", s=90,
                   color=colors.get(L, "grey"), edgecolor="black", linewidth=0.6, zorder=5)
    for kind, marker in (("pca", "*"), ("random", "X")):
        if any(k == kind for k, _ in c.baselines):
            ax.scatter([], [], marker=marker, s=90, color="white", edgecolor="black", label=f"{kind} baseline")
    if c.trivial:
        ax.axhline(c.trivial["accuracy"].mean, color="grey", ls="--", lw=0.9, label="majority class")
        ax.axvline(c.trivial["test_mse"].mean, color="grey", ls=":", lw=0.9, label="mean training image")
    ax.set_xlabel("test reconstruction MSE (pixels in [−1, 1]; lower is better)")
    ax.set_ylabel("test accuracy (fraction correct)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Classification vs reconstruction: {title}\n{_subtitle(c)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower left")
    run.save_figure(fig, "pareto.png")

    # every measure against λ, the λ of the sweep equally spaced (0.9, 0.99 and 1 would crowd otherwise)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.3))
    keys = ("accuracy", "test_mse", "test_ce")
    all_lambdas = sorted({lam for cv in c.curves.values() for lam in cv.lambdas})
    pos = {lam: i for i, lam in enumerate(all_lambdas)}
    for (family, L), cv in c.curves.items():
        i = fam_index[family]
        xs = [pos[lam] for lam in cv.lambdas]
        for ax, key in zip(axes, keys):
            ivs = cv.measures[key]
            ax.errorbar(xs, [iv.mean for iv in ivs], yerr=_err(ivs), color=colors[L],
                        marker=MARKERS[i % len(MARKERS)], ls=STYLES[i % len(STYLES)], ms=4, capsize=2.5,
                        lw=1.3, label=label(family, L))
        peak = cv.mean_peak
        axes[0].plot([pos[peak]], [cv.at("accuracy", peak).mean], marker="o", ms=12, mfc="none", mec=colors[L],
                     mew=1.5)
    for (kind, L), d in c.baselines.items():
        if kind == "pca":
            for ax, key in zip(axes, keys):
                ax.axhline(d[key].mean, color=colors.get(L, "grey"), lw=0.9, ls=(0, (1, 2)))
    for ax, key in zip(axes, keys):
        if key in c.trivial:
            ax.axhline(c.trivial[key].mean, color="grey", lw=0.9, ls="--")
    ylabels = ("test accuracy (fraction correct)", "test MSE (pixels in [−1, 1])", "test cross-entropy (nats)")
    for ax, ylabel in zip(axes, ylabels):
        ax.set_xticks(range(len(all_lambdas)), [f"{lam:g}" for lam in all_lambdas])
        ax.set_xlabel("λ, the reconstruction weight (equally spaced)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1.02)
    axes[1].set_ylim(bottom=0)
    axes[2].set_ylim(bottom=0)
    axes[0].legend(fontsize=8, loc="lower left")
    notes = ["circle: peak of the mean accuracy curve"] if c.curves else []
    if any(k == "pca" for k, _ in c.baselines):
        notes.append("dotted: PCA of the same L")
    if c.trivial:
        notes.append("grey dashed: majority class / mean training image")
    fig.suptitle(f"{title}: {_subtitle(c)}\n" + "; ".join(notes), fontsize=9.5)
    fig.tight_layout()
    run.save_figure(fig, "vs_lambda.png")

    # the drop from the best λ to the largest, against the latent size
    if any(len(c.latents(f)) > 1 for f in families):
        fig, ax = plt.subplots(figsize=(6.0, 4.2))
        for family in families:
            sizes = c.latents(family)
            i = fam_index[family]
            drops = [c.curves[(family, L)].peaks["drop_from_best"] for L in sizes]
            ax.errorbar(sizes, [iv.mean for iv in drops], yerr=_err(drops), marker=MARKERS[i % len(MARKERS)],
                        ls=STYLES[i % len(STYLES)], capsize=3, label=family)
        hi = max(c.curves[k].lambdas[-1] for k in c.curves)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({L for _, L in c.curves}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("latent size L (log scale)")
        ax.set_ylabel(f"accuracy lost from the best λ to λ={hi:g}\n(fraction of test images)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"Accuracy drop vs latent size: {title}\n{_subtitle(c)}", fontsize=9.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        run.save_figure(fig, "accuracy_drop.png")


def reconstructions(run: RunContext, examples: np.ndarray, recon: dict[tuple[int, float], Any], family: str,
                    latents: list[int], lambdas: list[float], seed: int) -> None:
    """`reconstructions.png`: the test `examples` and their reconstructions at every (L, λ) of `family`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("input", examples)]
    c, h, w = examples.shape[1:]
    for latent in latents:
        for lam in lambdas:
            rec = recon.get((latent, lam))
            if rec:
                rows.append((f"L={latent} λ={lam:g}", np.asarray(rec, dtype=np.float32).reshape(-1, c, h, w)))
    k = len(examples)
    fig, axes = plt.subplots(len(rows), k, figsize=(0.8 * k + 1.3, 0.8 * len(rows) + 0.4), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for j in range(k):
            ax = axes[r][j]
            img = np.clip(np.asarray(imgs[j]), 0, 1).transpose(1, 2, 0)
            ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    axes[0][0].set_title(f"test images and their reconstructions, {family}, seed {seed}", fontsize=9, loc="left")
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    run.save_figure(fig, "reconstructions.png")


# -- report --------------------------------------------------------------------------------------
def report_section(c: Curves, found: dict[str, Any], *, has_reconstructions: bool) -> str:
    """Markdown: the curves (every λ with intervals), the peaks, the findings, baselines and figures."""
    several = len(c.seeds) > 1

    def fmt(iv: Interval, digits: int = 4) -> str:
        return iv.format(digits) if several else f"{iv.mean:.{digits}f}"

    seeds = (f"{len(c.seeds)} seeds {c.seeds}: mean ± half-width of the 95 % confidence interval"
             if several else f"one seed ({c.seeds[0]}): no intervals; run with `seeds: [0, 1, 2]` to test findings")
    lines = [
        "Loss `λ·MSE + (1-λ)·CE` with gradient routing (decoder: MSE only, classifier: CE only, "
        "encoder: the λ-weighted sum). MSE is measured on pixels in [-1, 1]. All numbers are on the test "
        f"split; {seeds}.",
        "",
        "| family | L | λ | accuracy | read-out accuracy | test MSE | test CE |",
        "|---|---|---|---|---|---|---|",
    ]
    for (family, L), cv in c.curves.items():
        for i, lam in enumerate(cv.lambdas):
            m = {k: cv.measures[k][i] for k in MEASURES}
            peak = " (peak)" if lam == cv.mean_peak else ""
            lines.append(f"| {family} | {L} | {lam:g}{peak} | {fmt(m['accuracy'])} | {fmt(m['readout_accuracy'])} | "
                         f"{fmt(m['test_mse'])} | {fmt(m['test_ce'])} |")
    for (kind, L), d in c.baselines.items():
        lines.append(f"| {kind} baseline | {L} | – | {fmt(d['accuracy'])} | – | {fmt(d['test_mse'])} | "
                     f"{fmt(d['test_ce'])} |")
    if c.trivial:
        t = c.trivial
        lines.append(f"| trivial (majority class, mean training image) | – | – | {fmt(t['accuracy'])} | – | "
                     f"{fmt(t['test_mse'])} | {fmt(t['test_ce'])} |")
    lines += [
        "",
        "*accuracy*: the classifier head trained with the model (the study's measure); *read-out accuracy*: a "
        "logistic regression fitted afterwards on the frozen final latent; *(peak)*: the λ of the highest mean "
        "accuracy.",
        "",
        "**The curves** (per seed, the best λ is that seed's highest accuracy, so the rise to it cannot be "
        "negative: a description, not a test; the drop runs from it to the largest λ):",
        "",
    ]
    for (family, L), cv in c.curves.items():
        p = cv.peaks
        lo, hi = cv.lambdas[0], cv.lambdas[-1]
        lines.append(
            f"- {family}, L={L}: accuracy {fmt(cv.at('accuracy', lo))} at λ={lo:g}, highest at λ={cv.mean_peak:g} "
            f"({fmt(cv.at('accuracy', cv.mean_peak))}; best λ per seed: {_lams(cv, 'best_lambda')}), "
            f"{fmt(cv.at('accuracy', hi))} at λ={hi:g}: a rise of {fmt(p['rise_to_best'])} from λ={lo:g} to "
            f"the best λ and a drop of {fmt(p['drop_from_best'])} from it to λ={hi:g}. Test MSE falls from "
            f"{fmt(cv.at('test_mse', lo))} (λ={lo:g}) to {fmt(cv.at('test_mse', hi))} (λ={hi:g}), lowest at "
            f"λ={_lams(cv, 'lowest_mse_lambda')}."
        )
    lines += ["", "**Findings** (95 % intervals compared; `probekit.compare`):", ""]
    for family, fam in found.items():
        for key, f in fam.items():
            if key.startswith("L"):
                for name, g in f.items():
                    what = {"accuracy_falls_to_lambda_max": "accuracy falls from its peak to the largest λ",
                            "mse_falls_with_lambda": "MSE falls from the smallest to the largest λ"}[name]
                    lines.append(f"- {family}, {key[0]}={key[1:]}, {what}: {_verdict(g)} — {g['text']}.")
        if "larger_latent_loses_less_accuracy" in fam:
            g = fam["larger_latent_loses_less_accuracy"]
            lines.append(f"- {family}, a larger latent loses less accuracy from its best λ to the largest λ: "
                         f"{_verdict(g)} — {g['text']}.")
    warns = warnings_for(c)
    if warns:
        lines += ["", "**Warnings** (not clearly better than a trivial baseline):", ""]
        lines += [f"- {w}" for w in warns]
    lines += ["", "![measures vs lambda](figures/vs_lambda.png)", "", "![accuracy vs MSE](figures/pareto.png)"]
    if any(len(c.latents(f)) > 1 for f in c.families()):
        lines += ["", "![accuracy drop vs latent size](figures/accuracy_drop.png)"]
    if has_reconstructions:
        lines += ["", "![reconstructions](figures/reconstructions.png)"]
    return "\n".join(lines)


def _lams(cv: Curve, key: str) -> str:
    """One λ per seed, e.g. `0.75, 0.5, 0.75`."""
    return ", ".join(f"{p[key]:g}" for p in cv.seed_peaks)


def _verdict(g: dict[str, Any]) -> str:
    if not g["tested"]:
        return "not tested (one seed)"
    if g["holds"] is None:
        return "not shown (intervals overlap)"
    return "shown" if g["holds"] else "the opposite is shown"
