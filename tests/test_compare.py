"""`probekit compare`: runs of a shipped example with different --set values, side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from probekit._cli import main
from probekit._report import flatten, natural_sorted, sort_key

QUICK = ["--set", "data.type=digits", "--set", "data.limit=600", "--set", "data.test_limit=300", "-q"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The quickstart example (not written for this test; on digits for time) run with
    model.train.epochs 1 and 2, and once more on other data (data.test_limit)."""
    root = tmp_path_factory.mktemp("compare")
    mp = pytest.MonkeyPatch()
    mp.setenv("PROBEKIT_CACHE", str(root / "cache"))
    try:
        for name, extra in (("one", ["model.train.epochs=1"]), ("two", ["model.train.epochs=2"]),
                            ("other-data", ["model.train.epochs=1", "data.test_limit=200"])):
            sets = [a for item in extra for a in ("--set", item)]
            assert main(["run", "quickstart", "-o", str(root / name), *QUICK, *sets]) == 0
    finally:
        mp.undo()
    return root


def _metrics(folder: Path) -> dict:
    data = json.loads((folder / "metrics.json").read_text())
    return dict(flatten({k: v for k, v in data.items() if k != "provenance"}))


def test_compare_prints_deltas_and_the_spec_diff(runs, capsys):
    assert main(["compare", str(runs / "one"), str(runs / "two")]) == 0
    out = capsys.readouterr().out
    a, b = "quickstart (model.train.epochs=1)", "quickstart (model.train.epochs=2)"
    assert "warning" not in out  # same probe, same data
    header = next(line for line in out.splitlines() if line.startswith("result"))
    assert header.split("  ")[0] == "result" and a in header and b in header and "Δ" in header
    # every accuracy row: both values and B - A, as metrics.json has them
    first, second = _metrics(runs / "one"), _metrics(runs / "two")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("accuracy.")}
    assert set(rows) == {f"accuracy.{n}" for n in ("0", "2", "5", "6", "9", "10", "12")}
    for key, row in rows.items():
        delta = float(row[3]) if len(row) > 3 else 0.0
        assert math.isclose(delta, second[key] - first[key], rel_tol=1e-3, abs_tol=1e-4), (key, row)
        assert math.isclose(float(row[1]), first[key], abs_tol=5e-4)
        if first[key] and second[key] != first[key]:
            assert row[4] == f"({(second[key] - first[key]) / abs(first[key]):+.0%})"
    assert any(len(r) > 3 and float(r[3]) != 0 for r in rows.values())  # the runs differ
    # layer (natural) order: accuracy.2 before accuracy.10
    keys = [line.split()[0] for line in out.splitlines() if line.startswith("accuracy.")]
    assert keys == ["accuracy.0", "accuracy.2", "accuracy.5", "accuracy.6", "accuracy.9", "accuracy.10",
                    "accuracy.12"]
    # the spec diff: unified, the changed key only
    diff = out[out.index(f"spec differences, {a} -> {b}:"):].splitlines()[1:]
    assert [line for line in diff if line.startswith(("-", "+"))] == ["-    epochs: 1", "+    epochs: 2"]
    assert diff[0].startswith("@@")


def test_compare_warns_about_other_data_and_writes_md_html_csv_png(runs, capsys, tmp_path):
    stem = tmp_path / "cmp"
    assert main(["compare", str(runs / "one"), str(runs / "other-data"), "-o", str(stem), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "**Warning:** the runs use different data" in out and "test_limit: 200" in out
    assert "| result | quickstart (data.test_limit=200) |" not in out  # the first run is the reference
    assert "quickstart (data.test_limit=300)" in out and "quickstart (data.test_limit=200)" in out
    assert "```diff" in out and "-  test_limit: 300" in out and "+  test_limit: 200" in out
    for ext in ("csv", "md", "html", "png"):
        assert (tmp_path / f"cmp.{ext}").stat().st_size > 0
    html_text = (tmp_path / "cmp.html").read_text()
    assert "Warning:" in html_text and "data:image/png;base64," in html_text and "<span class='add'>" in html_text
    import csv

    rows = list(csv.reader((tmp_path / "cmp.csv").open()))
    assert rows[0][2:] == ["quickstart (data.test_limit=200)", "Δ"]
    layers = json.loads((runs / "one" / "report.json").read_text())["layers"]
    assert [r[0] for r in rows[1:]] == natural_sorted([r[0] for r in rows[1:]], layers)


def test_compare_of_a_folder_without_results_exits_2(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "has no metrics.json" in capsys.readouterr().err


def test_natural_order_follows_the_model_layers():
    layers = ["embed", "block.2", "block.11", "norm", "head"]
    keys = ["mse.head", "mse.block.11", "mse.embed", "mse.block.2", "mse.norm", "acc.11", "acc.2", "acc.10a", "acc.9"]
    assert sorted(keys, key=lambda k: sort_key(k, layers)) == [
        "acc.2", "acc.9", "acc.10a", "acc.11", "mse.embed", "mse.block.2", "mse.block.11", "mse.norm", "mse.head"]
