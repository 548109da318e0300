"""report.md: numbers in natural (layer) order, to meaningful digits, no raw table beside a
probe's own; and the rounding rules against their closed forms."""

from __future__ import annotations

import json

import pytest

from probekit._report import fmt, render, rounded, summary_line


def _run_dir(tmp_path, metrics, sections=(), layers=()):
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "report.json").write_text(json.dumps({"name": "r", "sections": list(sections), "timings": {},
                                                      "device": "cpu", "layers": list(layers)}))
    (tmp_path / "spec.yaml").write_text("name: r\n")
    return tmp_path


def test_results_table_in_layer_order_with_meaningful_digits(tmp_path):
    layers = ["embed", "block.2", "block.11", "head"]
    metrics = {"mse": {"head": 0.25, "block.11": 0.1, "embed": 0.0123456789, "block.2": 0.8999999761581421},
               "accuracy": {"11": 231 / 256, "2": 0.5}}
    md, _ = render(_run_dir(tmp_path, metrics, layers=layers))
    rows = [line for line in md.read_text().splitlines() if line.startswith("| ") and "result" not in line]
    assert rows == ["| accuracy.2 | 0.5 |", "| accuracy.11 | 0.9023 |", "| mse.embed | 0.01235 |",
                    "| mse.block.2 | 0.9 |", "| mse.block.11 | 0.1 |", "| mse.head | 0.25 |"]


def test_no_raw_table_beside_the_probes_own(tmp_path):
    sections = [["Model training", "trained"], ["Linear probe", "| layer | accuracy |\n|---|---|\n| `5` | 0.9 |"]]
    md, html = render(_run_dir(tmp_path, {"accuracy": {"5": 0.9}, "best_layer": "5"}, sections=sections))
    text = md.read_text()
    assert "## Results" not in text and text.count("| `5` | 0.9 |") == 1
    assert "Every number of this run (2) is in `metrics.json`" in text
    assert "<h2>Linear probe</h2>" in html.read_text()


@pytest.mark.parametrize("value,text", [
    (231 / 256, "0.9023"), (0.8999999761581421, "0.9"), (0.125, "0.125"), (12345.678, "12346"),
    (0.000123456, "0.0001235"), (1e-7, "1e-07"), (2e9, "2e+09"), (3.0, "3"), (-0.5, "-0.5"), (0.0, "0"),
    (float("nan"), "nan"),
])
def test_rounded(value, text):
    assert rounded(value) == text


def test_an_interval_rounds_its_mean_to_its_precision():
    assert fmt({"mean": 0.91234, "std": 0.01, "ci95": 0.0234, "n": 3}) == "0.912 ± 0.023 (n=3)"
    assert fmt({"mean": 1234.56, "std": 10, "ci95": 25.4, "n": 5}) == "1235 ± 25 (n=5)"
    assert fmt({"mean": 0.5, "std": None, "ci95": None, "n": 1}) == "0.5 (n=1)"


def test_an_interval_of_seeds_that_agree_shows_no_float_noise():
    # three seeds with the same value: the float sum leaves a spread of 3.4e-16, not a precision
    assert fmt({"mean": 0.84500000000000008, "std": 2e-16, "ci95": 3.4e-16, "n": 3}) == "0.845 ± 0 (n=3)"
    # a tiny but real spread: at most 6 significant digits of the mean, exponents outside 1e-4..1e6
    assert fmt({"mean": 0.9712345, "std": 1e-7, "ci95": 3.1e-7, "n": 3}) == "0.971235 ± 3.1e-07 (n=3)"
    assert fmt({"mean": 2.5e-6, "std": 1e-7, "ci95": 3e-7, "n": 3}) == "2.50e-06 ± 3e-07 (n=3)"


def test_summary_line_natural_order_and_whole_entries():
    line = summary_line({"acc": {"11": 0.5, "2": 0.25, "block": "x"}, "ok": True, "per_seed": {"0": {"a": 1}}})
    assert line == "acc.2=0.25, acc.11=0.5"  # text and booleans are not numbers of the summary
    long = summary_line({"acc": {str(i): 1 / 3 for i in range(100)}}, limit=80)
    assert len(long) <= 80 and long.endswith("more") and "acc.0=0.3333" in long


def test_summary_line_of_seeds_shows_the_intervals():
    interval = {"mean": 0.91234, "std": 0.01, "ci95": 0.0234, "n": 2}
    results = {"seeds": [0, 1], "aggregate": {"accuracy": {"5": interval}},
               "per_seed": {"0": {"accuracy": {"5": 0.9}}, "1": {"accuracy": {"5": 0.92}}}}
    assert summary_line(results) == "aggregate.accuracy.5=0.912 ± 0.023 (n=2)"
