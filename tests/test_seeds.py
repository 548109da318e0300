"""Repeated seeds: intervals, findings, baselines, and runs over `seeds:` combined into tables."""

import csv
import json

import numpy as np
import pytest
from scipy import stats

import probekit
from probekit import Interval, SpecError, baseline_warning, compare


def test_interval_matches_scipy_t_interval():
    values = [0.91, 0.935, 0.902, 0.948, 0.921]
    iv = Interval.of(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert iv.n == 5
    assert iv.mean == pytest.approx(np.mean(values), abs=1e-12)
    assert iv.std == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert iv.low == pytest.approx(low, abs=1e-12) and iv.high == pytest.approx(high, abs=1e-12)
    one = Interval.of([0.5])
    assert one.n == 1 and one.std == 0.0 and np.isnan(one.ci95) and one.low == one.high == 0.5
    assert one.as_dict() == {"mean": 0.5, "std": 0.0, "ci95": None, "n": 1}  # strict JSON: no NaN


def test_compare_states_effect_size_and_separation():
    sep = compare([0.90, 0.91, 0.92], [0.80, 0.81, 0.82], a_name="A", b_name="B")
    assert sep.separated and sep.tested
    assert sep.difference == pytest.approx(0.1)
    assert sep.effect_size == pytest.approx(0.1 / 0.01)  # pooled std 0.01
    assert sep.text == "A > B by 0.100 (95 % intervals separate; Cohen's d 10.0, n=3 vs 3)"
    close = compare([0.91, 0.93, 0.89], [0.89, 0.91, 0.90], a_name="A", b_name="B")
    assert not close.separated and close.tested
    assert close.text.startswith("A > B by 0.010: not separated (95 % intervals overlap")
    one = compare(0.93, 0.91, a_name="`block.5`", b_name="`block.2`")
    assert one.text == "`block.5` > `block.2` by 0.020 (one seed: not tested)"
    assert not one.tested and not one.separated and one.effect_size is None


def test_baseline_warning():
    chance = 0.1
    assert baseline_warning("accuracy", 0.1, chance, baseline_name="chance") is not None  # at the baseline
    assert baseline_warning("accuracy", 0.103, chance) is not None  # within the 5 % margin
    assert baseline_warning("accuracy", 0.6, chance) is None
    # several seeds: the interval must clear the baseline
    assert baseline_warning("accuracy", [0.05, 0.3, 0.12], chance) is not None
    assert baseline_warning("accuracy", [0.55, 0.6, 0.58], chance) is None
    # errors: lower is better
    assert baseline_warning("mse", 0.099, 0.1, higher_is_better=False) is not None
    assert baseline_warning("mse", 0.05, 0.1, higher_is_better=False) is None
    msg = baseline_warning("linear probe accuracy at `9`", 0.1, chance, baseline_name="chance accuracy")
    assert msg.startswith("linear probe accuracy at `9` is not clearly above chance accuracy: 0.1000")


def test_combine_table_keys_and_aggregate_rows():
    from probekit._seeds import combine_table

    def table(values):
        return ["variant", "length", "mse"], [
            {"variant": "a", "length": "16", "mse": str(values[0])},
            {"variant": "a", "length": "32", "mse": str(values[1])}]

    t = combine_table("results.csv", {0: table([1.0, 2.0]), 1: table([3.0, 4.0]), 2: table([2.0, 6.0])})
    assert t.keys == ["variant", "length"]  # text, and a number equal in every seed's row: keys
    assert t.values == ["mse"]
    assert t.columns == ["seed", "variant", "length", "mse", "mse_std", "mse_ci95", "n"]
    assert len(t.rows) == 6 and len(t.summary) == 2
    row = t.select(length=32)[0]
    assert row["seed"] == "all" and row["n"] == 3
    assert row["mse"] == pytest.approx(4.0) and row["mse_std"] == pytest.approx(2.0)
    assert row["mse_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * 2.0 / np.sqrt(3))
    assert t.interval("mse", variant="a", length=16).mean == pytest.approx(2.0)
    # declared keys win over the inference (here equal values would otherwise look like a key)
    same = combine_table("r.csv", {0: table([1.0, 2.0]), 1: table([1.0, 2.0])}, keys=["variant", "length"])
    assert same.values == ["mse"] and same.summary[0]["mse_std"] == 0.0


def test_seeds_must_differ_and_can_be_set_on_the_command_line(digits_spec):
    loaded = probekit.load_spec(digits_spec(), ["seeds=[0,1,2]"])
    assert loaded.spec.seeds == [0, 1, 2]
    with pytest.raises(SpecError, match="seeds") as err:
        probekit.load_spec(digits_spec(), ["seeds=[1,1]"])
    assert err.value.path == "seeds"


def test_a_run_over_seeds_writes_seed_runs_and_combined_tables(tmp_path, digits_spec):
    spec = digits_spec()
    spec["model"]["train"]["epochs"] = 1
    spec["probe"]["layers"] = ["5", "9", "11"]  # depth order, not the text order of metrics.json's keys
    spec["seeds"] = [3, 4]
    out = tmp_path / "run"
    results = probekit.run(spec, out)
    per_seed = {s: json.loads((out / "seeds" / str(s) / "metrics.json").read_text()) for s in (3, 4)}
    # every seed run is a full run, trained with its own seed, on the data split of `seed:`
    for s in (3, 4):
        sub = out / "seeds" / str(s)
        assert {"spec.yaml", "metrics.json", "results.csv", "report.md", "log.txt"} <= {p.name for p in sub.iterdir()}
        assert (sub / "figures" / "accuracy_vs_depth.png").exists()
    assert per_seed[3]["accuracy"] != per_seed[4]["accuracy"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["seeds"] == [3, 4] == results["seeds"]
    assert on_disk["per_seed"]["3"] == {k: v for k, v in per_seed[3].items() if k != "provenance"}
    acc = [per_seed[s]["accuracy"]["9"] for s in (3, 4)]
    agg = on_disk["aggregate"]["accuracy"]["9"]
    assert agg["mean"] == pytest.approx(np.mean(acc)) and agg["std"] == pytest.approx(np.std(acc, ddof=1))
    assert agg["ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * np.std(acc, ddof=1) / np.sqrt(2)) and agg["n"] == 2
    assert on_disk["provenance"]["seeds"] == [3, 4]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["seed", "layer", "metric", "value", "value_std", "value_ci95", "n"]
    mean_row = next(r for r in rows if r["seed"] == "all" and r["layer"] == "9" and r["metric"] == "accuracy")
    assert float(mean_row["value"]) == pytest.approx(np.mean(acc)) and mean_row["n"] == "2"
    assert sum(r["seed"] == "3" for r in rows) == sum(r["seed"] == "all" for r in rows)
    # the aggregation alone (e.g. after seeds ran as separate jobs) gives the same tables
    first = (out / "results.csv").read_text()
    (out / "results.csv").unlink()
    again = probekit.aggregate_seeds(out)
    assert (out / "results.csv").read_text() == first
    assert again.interval("accuracy", "9").mean == pytest.approx(np.mean(acc))
    # the combined report and figure: the probe's summarize, layers in depth order, intervals, findings
    assert (out / "figures" / "accuracy_vs_depth.png").exists()
    report = (out / "report.md").read_text()
    section = report.split("## Linear probe")[1]
    assert section.index("| `5` |") < section.index("| `9` |") < section.index("| `11` |")
    assert "mean ± half-width of the 95 % interval over seeds" in section and "n=2" in section
    assert "95 % intervals" in section  # the findings compare intervals
    # --resume keeps the finished seeds
    probekit.run(spec, out, resume=True)
    log = (out / "log.txt").read_text().split("(resumed)")[-1]
    assert "seed 3 (1/2): finished before" in log and "seed 4 (2/2): finished before" in log
