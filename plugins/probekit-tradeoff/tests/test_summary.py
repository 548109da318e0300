"""The λ-curve summary over seeds: peaks, paired drops, intervals and findings; `seeds:` end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from probekit_tradeoff._report import Curves, findings, peaks, summary
from scipy import stats

from probekit import load_spec
from probekit.testing import execute_run, prepare_run

LAMBDAS = [0.0, 0.5, 0.9, 1.0]
# accuracy per seed and λ: L=2 peaks inside and collapses at λ=1, L=16 barely moves
ACC = {
    2: [[0.70, 0.80, 0.84, 0.45], [0.72, 0.79, 0.82, 0.40], [0.69, 0.83, 0.80, 0.47]],
    16: [[0.90, 0.93, 0.92, 0.84], [0.89, 0.92, 0.93, 0.85], [0.91, 0.93, 0.91, 0.83]],
}


def _rows() -> list[dict[str, Any]]:
    rows = []
    for seed in range(3):
        for L, accs in ACC.items():
            for lam, acc in zip(LAMBDAS, accs[seed]):
                mse = (0.25 if L == 2 else 0.15) - 0.06 * lam + 0.002 * seed
                rows.append({"seed": seed, "family": "fc-medium", "latent": L, "lambda": lam, "accuracy": acc,
                             "test_mse": mse, "test_ce": 1 - acc, "readout_accuracy": acc})
        rows.append({"seed": seed, "family": "pca", "latent": 2, "lambda": None, "accuracy": 0.43,
                     "test_mse": 0.22, "test_ce": 1.4, "readout_accuracy": None})
        rows.append({"seed": seed, "family": "trivial", "latent": None, "lambda": None, "accuracy": 0.11,
                     "test_mse": 0.42, "test_ce": 2.3, "readout_accuracy": None})
    return rows


def _t_half_width(values: list[float]) -> float:
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    return (hi - lo) / 2


def test_peaks_of_one_curve() -> None:
    rows = [{"lambda": lam, "accuracy": a, "test_mse": m}
            for lam, a, m in zip(LAMBDAS, [0.70, 0.80, 0.84, 0.45], [0.25, 0.22, 0.20, 0.19])]
    p = peaks(rows)
    assert p["best_lambda"] == 0.9 and p["best_accuracy"] == 0.84
    assert p["drop_from_best"] == pytest.approx(0.84 - 0.45)
    assert p["rise_to_best"] == pytest.approx(0.84 - 0.70)
    assert p["lowest_mse_lambda"] == 1.0 and p["mse_gain"] == pytest.approx(0.06)


def test_curves_intervals_and_findings_match_references() -> None:
    c = Curves.from_rows(_rows())
    assert c.seeds == [0, 1, 2] and sorted(c.curves) == [("fc-medium", 2), ("fc-medium", 16)]
    cv = c.curves[("fc-medium", 2)]
    assert cv.lambdas == LAMBDAS
    # every λ: mean and 95 % Student-t half-width over the three seeds (scipy's interval)
    for i in range(len(LAMBDAS)):
        values = [ACC[2][s][i] for s in range(3)]
        assert cv.measures["accuracy"][i].mean == pytest.approx(np.mean(values))
        assert cv.measures["accuracy"][i].ci95 == pytest.approx(_t_half_width(values))
    # the drop is paired: each seed's own best λ to λ=1
    drops = [max(a) - a[-1] for a in ACC[2]]
    assert cv.peaks["drop_from_best"].mean == pytest.approx(np.mean(drops))
    assert cv.peaks["drop_from_best"].ci95 == pytest.approx(_t_half_width(drops))
    assert cv.mean_peak == 0.9  # mean accuracy 0.82 at λ=0.9, 0.807 at λ=0.5
    found = findings(c)["fc-medium"]
    f = found["larger_latent_loses_less_accuracy"]
    assert f["tested"] and f["separated"] and f["holds"] is True
    assert f["difference"] == pytest.approx(np.mean([max(a) - a[-1] for a in ACC[16]]) - np.mean(drops))
    assert "95 % intervals separate" in f["text"]
    assert found["L2"]["accuracy_falls_to_lambda_max"]["holds"] is True
    assert found["L2"]["mse_falls_with_lambda"]["holds"] is True
    summ = summary(c, intervals=True)
    assert summ["curves"]["fc-medium"]["L2"]["lambda=0.9"]["accuracy"]["n"] == 3
    assert summ["baselines"]["pca"]["L2"]["accuracy"]["mean"] == pytest.approx(0.43)
    assert summ["trivial"]["test_mse"]["mean"] == pytest.approx(0.42)


def test_one_seed_is_not_tested() -> None:
    c = Curves.from_rows([r for r in _rows() if r["seed"] == 1])
    f = findings(c)["fc-medium"]["larger_latent_loses_less_accuracy"]
    assert f["tested"] is False and f["holds"] is None and "one seed: not tested" in f["text"]
    assert summary(c, intervals=False)["curves"]["fc-medium"]["L2"]["peaks"]["drop_from_best"] == pytest.approx(
        0.82 - 0.40)


def test_seeds_combine_into_intervals(tmp_path: Path) -> None:
    """`seeds: [0, 1]`: each seed's run under seeds/<seed>/, the combined results.csv with intervals, and
    summarize's summary.json equal to the mean of the seed runs' own numbers."""
    spec = {"name": "t", "seed": 0, "seeds": [0, 1], "device": "cpu", "data": {"type": "digits"},
            "probe": {"type": "tradeoff", "families": ["fc-small"], "latents": [2, 8], "lambdas": [0.0, 1.0],
                      "epochs": 2, "batch_size": 64, "reconstructions": 3, "baselines": ["pca"]}}
    run = prepare_run(load_spec(spec), tmp_path / "run", quiet=True)
    execute_run(run)
    root = tmp_path / "run"
    with open(root / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"accuracy_ci95", "test_mse_std", "n"} <= set(rows[0])
    per_seed = [json.loads((root / "seeds" / str(s) / "metrics.json").read_text()) for s in (0, 1)]
    summ = json.loads((root / "summary.json").read_text())
    assert summ["seeds"] == [0, 1]
    got = summ["curves"]["fc-small"]["L8"]["lambda=1"]["accuracy"]
    want = [m["curves"]["fc-small"]["L8"]["lambda=1"]["accuracy"] for m in per_seed]
    assert got["n"] == 2 and got["mean"] == pytest.approx(np.mean(want))
    assert got["ci95"] == pytest.approx(_t_half_width(want))
    for name in ("pareto.png", "vs_lambda.png", "accuracy_drop.png", "reconstructions.png"):
        assert (root / "figures" / name).stat().st_size > 5000
    report = (root / "report.md").read_text()
    assert "2 seeds [0, 1]" in report and "larger latent loses less accuracy" in report
