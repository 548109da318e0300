"""The `linear` probe: converged logistic regression (against scikit-learn), C chosen on a validation
split, streaming, trivial baselines and the warnings they raise."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

import probekit
from probekit.testing import execute_run, prepare_run

LAYERS = ["2", "5", "9", "11"]


def _spec(**probe):
    return {
        "name": "held-out", "seed": 3, "device": "cpu",
        "model": {"type": "module", "factory": "probekit.testing:small_cnn",
                  "kwargs": {"in_channels": 1, "num_classes": 10, "width": 8},
                  "train": {"epochs": 1, "lr": 0.003, "batch_size": 64}},
        "data": {"type": "digits", "batch_size": 256},
        "probe": {"type": "linear", "layers": LAYERS, **probe},
        "metrics": ["accuracy"],
    }


def _standardised(run, name, split):
    probe = run.probe
    feats = probe._features(run, [name], split)
    x = probe._column(feats, name).double()
    mean, std = probe.stats[name]
    return ((x - mean.double()) / std.double()).numpy(), probe._column(feats, "labels").numpy()


def test_linear_probe_accuracy_matches_scikit_learn_on_the_same_cached_features(tmp_path):
    """Done-means 1: per layer within 0.005 of LogisticRegression(lbfgs, same C, converged)."""
    C = 0.5
    run = prepare_run(probekit.load_spec(_spec(C=C)), tmp_path / "run")
    results = execute_run(run)
    assert all(results["converged"].values())
    for name in LAYERS:
        x_train, y_train = _standardised(run, name, "train")
        x_test, y_test = _standardised(run, name, "test")
        ref = LogisticRegression(C=C, solver="lbfgs", tol=1e-10, max_iter=20000).fit(x_train, y_train)
        assert ref.n_iter_[0] < 20000  # the reference converged
        ref_acc = float((ref.predict(x_test) == y_test).mean())
        assert abs(results["accuracy"][name] - ref_acc) <= 0.005, (name, results["accuracy"][name], ref_acc)
        # the same optimum: the objective of the probe's weights is the reference's
        clf = run.probe.classifiers[name]
        w, b = clf.weight.detach().double().numpy(), clf.bias.detach().double().numpy()

        assert _objective(x_train, y_train, w, b, C) == pytest.approx(
            _objective(x_train, y_train, ref.coef_, ref.intercept_, C), rel=1e-4)


def _objective(x, y, w, b, C):
    """scikit-learn's objective: mean cross-entropy + ||w||^2 / (2 C n)."""
    z = x @ w.T + b
    z -= z.max(1, keepdims=True)
    nll = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean()
    return nll + (w * w).sum() / (2 * C * len(y))


def test_c_is_chosen_on_a_validation_split_and_reported(tmp_path):
    grid = [0.01, 1.0, 100.0]
    results = probekit.run(_spec(c_grid=grid), tmp_path / "run")
    assert set(results["C"].values()) <= set(grid)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "validation accuracy (1150 fit / 288 validation rows)" in log
    assert "L-BFGS" in log and "converged" in log
    with open(tmp_path / "run" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    metrics = {(r["layer"], r["metric"]): float(r["value"]) for r in rows}
    for name in LAYERS:
        assert metrics[(name, "converged")] == 1.0 and metrics[(name, "iterations")] >= 1
        assert metrics[(name, "C")] == results["C"][name]
    labels = torch.tensor([int(y) for _, y in _test_set()])
    chance = float(torch.bincount(labels).max()) / len(labels)  # the majority class of the test set
    assert metrics[("baseline", "chance_accuracy")] == pytest.approx(chance)
    assert results["chance_accuracy"] == pytest.approx(chance)


def _test_set():
    from probekit import create_dataset

    return create_dataset("digits", seed=3).test


def test_streamed_features_give_the_in_memory_result(tmp_path):
    loaded = probekit.run(_spec(C=1.0), tmp_path / "a")
    streamed = probekit.run(_spec(C=1.0, stream_above_mb=0.01, chunk_rows=100), tmp_path / "b")
    assert streamed["accuracy"] == loaded["accuracy"]
    assert streamed["iterations"] == loaded["iterations"]


def silent_net() -> nn.Sequential:
    """A classifier whose layer `1` outputs zeros: nothing can be decoded from it."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.zero_()
    return net


def test_a_result_at_the_trivial_baseline_is_warned_about_in_the_log_and_report(tmp_path, monkeypatch):
    """Done-means 5."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    spec = {"name": "silent", "device": "cpu", "data": {"type": "digits"},
            "model": {"type": "module", "factory": "test_linear_probe:silent_net"},
            "probe": {"type": "linear", "layers": ["0", "1"], "C": 1.0}}
    results = probekit.run(spec, tmp_path / "run")
    assert results["accuracy"]["1"] <= results["chance_accuracy"] + 0.01
    log = (tmp_path / "run" / "log.txt").read_text()
    report = (tmp_path / "run" / "report.md").read_text()
    warning = "linear probe test accuracy at `1` is not clearly above chance accuracy (majority class)"
    assert f"WARNING: {warning}" in log
    assert "## Warnings" in report and warning in report
    assert "at `0` is not clearly above" not in log  # the pixels themselves decode digits well
