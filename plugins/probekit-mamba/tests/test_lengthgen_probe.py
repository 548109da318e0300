"""The length-generalization probe end to end: options, training, prefixes, resume, outputs."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from probekit_mamba._lengthgen import BASELINE
from probekit_mamba._lengthgen_options import LengthGenOptions
from probekit_mamba._seqmodels import extract_patches

import probekit
from probekit import Interval, SpecError, compare, load_spec
from probekit.testing import execute_run as execute
from probekit.testing import limit_memory
from probekit.testing import prepare_run as prepare

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models

def tiny_spec(**probe):
    options = {"type": "length-generalization", "variants": ["mamba", "transformer"],
               "train_lengths": [2, 6], "eval_lengths": [2, 4, 12], "prefix_lengths": [1, 4, 12],
               "patch_size": 2, "queries": 6, "d_model": 8, "n_layers": 2, "state_size": 4,
               "epochs": 2, "steps_per_epoch": 3, "batch_size": 16, "lr": 3e-3, "eval_images": 24}
    options.update(probe)
    return {"name": "lg", "seed": 0, "device": "cpu", "data": {"type": "digits"}, "probe": options}


def test_options_defaults_and_errors():
    o = LengthGenOptions()
    assert o.variants == ["mamba", "mamba-length-adaptive", "transformer"]
    assert o.resolved_eval_lengths() == [8, 36, 64, 96, 128, 192, 256]
    assert o.resolved_prefix_lengths()[-1] == 256
    # b is always evaluated, lengths are sorted and deduplicated
    assert LengthGenOptions(eval_lengths=[100, 8, 8]).resolved_eval_lengths() == [8, 64, 100]
    for bad in ({"train_lengths": [10, 5]}, {"variants": ["mamba", "mamba"]}, {"variants": ["rnn"]},
                {"d_model": 15}, {"eval_lengths": []}, {"model": "x"}):
        with pytest.raises(ValueError):
            LengthGenOptions(**bad)


def test_spec_validation_names_the_key():
    spec = tiny_spec(train_lengths=[9, 3])
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    assert "probe.train_lengths" in str(err.value)
    loaded = load_spec(tiny_spec())  # no `model:` section needed
    assert loaded.spec.model is None


def test_tiny_run_end_to_end(tmp_path):
    run = prepare(load_spec(tiny_spec(variants=["mamba", "mamba-length-adaptive", "transformer"],
                                      dt_scaling=True, schedule="cosine", warmup_steps=2)), tmp_path / "r")
    results = execute(run)
    with open(tmp_path / "r" / "results.csv") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    assert header == ["variant", "length", "mse"]
    assert [(r[0], int(r[1])) for r in rows] == [
        (v, n) for v in ("mamba", "mamba-length-adaptive", "transformer", BASELINE) for n in (2, 4, 6, 12)]
    assert all(0 < float(r[2]) < 1 for r in rows)
    for fig in ("error_vs_length.png", "prefix_reconstructions.png"):
        assert (tmp_path / "r" / "figures" / fig).stat().st_size > 5000
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(metrics["mse_train_range"]) == {"mamba", "mamba-length-adaptive", "transformer"}
    by = {(r[0], int(r[1])): float(r[2]) for r in rows}
    assert metrics["mse_at_longest_train"]["mamba"] == pytest.approx(by["mamba", 6])
    assert metrics["mse_beyond"]["transformer"] == pytest.approx(by["transformer", 12])
    assert metrics["rise_beyond"]["mamba"] == pytest.approx(by["mamba", 12] - by["mamba", 6])
    in_range = (by["mamba", 2] + by["mamba", 4] + by["mamba", 6]) / 3
    assert metrics["mse_train_range"]["mamba"] == pytest.approx(in_range)
    # the baseline: one number (the queries are the same at every length), in results.csv at every length
    baseline = metrics["mse_mean_image_baseline"]
    assert [by[BASELINE, n] for n in (2, 4, 6, 12)] == pytest.approx([baseline] * 4)
    assert metrics["ratio_to_baseline_train_range"]["mamba"] == pytest.approx(in_range / baseline)
    # findings compare intervals; with one seed they say so
    rises = {"mamba_rises_beyond", "mamba-length-adaptive_rises_beyond", "transformer_rises_beyond"}
    assert set(metrics["findings"]) == {*rises, *(f"{k}_log" for k in rises), "adaptive_vs_mamba_in_range"}
    assert all("(one seed: not tested)" in text for text in metrics["findings"].values())
    diff = metrics["mse_train_range"]["mamba-length-adaptive"] - metrics["mse_train_range"]["mamba"]
    assert f"by {abs(diff):.4f}" in metrics["findings"]["adaptive_vs_mamba_in_range"]
    assert set(metrics["prefix_mse_example_image"]["transformer"]) == {"1", "4", "12"}
    assert results == {k: v for k, v in metrics.items() if k != "provenance"}
    # the mean-image reference, recomputed from the probe's evaluation sets
    probe = run.probe
    train, test = probe.images(run, "train"), probe.images(run, "test")[:24]
    mean_image = train.mean(0, keepdim=True).expand_as(test)
    for length in (2, 12):
        _, qry = probe.eval_set(run, test, length)
        expected = float(((extract_patches(mean_image, qry, 2) - extract_patches(test, qry, 2)) ** 2).mean())
        assert baseline == pytest.approx(expected, rel=1e-6)
    assert baseline < float((test ** 2).mean())  # better than predicting zeros
    report = (tmp_path / "r" / "report.md").read_text()
    assert "Length generalisation" in report and "one seed (0)" in report and f"| {BASELINE} |" in report
    # these models trained 6 steps: the report warns that they are not clearly better than the baseline
    assert "not clearly below the mean-training-image baseline" in report
    # each variant trained and checkpointed
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == [
        "lengthgen-mamba-length-adaptive.pt", "lengthgen-mamba.pt", "lengthgen-transformer.pt"]


def test_seeds_give_intervals_and_findings_that_compare_them(tmp_path):
    spec = tiny_spec(epochs=1, eval_lengths=[2, 12], prefix_lengths=[4])
    del spec["seed"]
    spec["seeds"] = [0, 1]
    out = tmp_path / "r"
    probekit.run(spec, out)
    per_seed = {s: json.loads((out / "seeds" / str(s) / "metrics.json").read_text()) for s in (0, 1)}
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    summary = {(r["variant"], int(r["length"])): r for r in rows if r["seed"] == "all"}
    assert set(summary) == {(v, n) for v in ("mamba", "transformer", BASELINE) for n in (2, 6, 12)}
    seed_rows = {(r["seed"], r["variant"], int(r["length"])): float(r["mse"]) for r in rows if r["seed"] != "all"}
    for key in (("mamba", 12), ("transformer", 6), (BASELINE, 2)):
        values = [seed_rows[(str(s), *key)] for s in (0, 1)]
        iv = Interval.of(values)
        assert float(summary[key]["mse"]) == pytest.approx(iv.mean)
        assert float(summary[key]["mse_ci95"]) == pytest.approx(iv.ci95)
        assert summary[key]["n"] == "2"
    assert [seed_rows[str(s), BASELINE, 2] for s in (0, 1)] == pytest.approx(
        [per_seed[s]["mse_mean_image_baseline"] for s in (0, 1)])
    # the findings: the intervals of the two seeds compared, with their effect size
    report = (out / "report.md").read_text()
    at12 = Interval.of([seed_rows[str(s), "mamba", 12] for s in (0, 1)])
    at6 = Interval.of([seed_rows[str(s), "mamba", 6] for s in (0, 1)])
    expected = compare(at12, at6, a_name="`mamba` at L=12", b_name="at L=6", digits=4).text
    assert expected in report and "n=2 vs 2" in expected
    # ... and on a log scale: the intervals of ln MSE, with the factor between the geometric means
    logs12 = Interval.of([math.log(seed_rows[str(s), "mamba", 12]) for s in (0, 1)])
    logs6 = Interval.of([math.log(seed_rows[str(s), "mamba", 6]) for s in (0, 1)])
    log_text = compare(logs12, logs6, a_name="ln MSE of `mamba` at L=12", b_name="at L=6", digits=3).text
    assert f"{log_text}; a factor of {math.exp(logs12.mean - logs6.mean):.2f}" in report
    assert "over 2 seeds (0, 1)" in report
    # figures: the combined curve, and the first seed's prefix reconstructions
    assert (out / "figures" / "error_vs_length.png").stat().st_size > 5000
    assert (out / "figures" / "prefix_reconstructions.png").read_bytes() == (
        out / "seeds" / "0" / "figures" / "prefix_reconstructions.png").read_bytes()


def test_training_reduces_the_loss(tmp_path):
    spec = tiny_spec(epochs=4, steps_per_epoch=12, lr=1e-2, eval_lengths=[4], prefix_lengths=[4])
    run = prepare(load_spec(spec), tmp_path / "r")
    execute(run)
    for variant in ("mamba", "transformer"):
        losses = run.probe.losses[variant]
        assert len(losses) == 4
        assert losses[-1] < 0.7 * losses[0], (variant, losses)


def test_prefix_predictions_have_query_shapes(tmp_path):
    run = prepare(load_spec(tiny_spec(epochs=1, steps_per_epoch=1)), tmp_path / "r")
    execute(run)
    probe = run.probe
    test = probe.images(run, "test")[:5]
    ctx, qry = probe.eval_set(run, test, 7)
    assert ctx.shape == (5, 7, 2) and qry.shape == (5, 6, 2)
    pred = probe.predict(probe.models["mamba"], test, ctx, qry, run.device, batch_size=2)
    assert pred.shape == (5, 6, 1, 2, 2)
    # predictions for a prefix are the model's outputs for that prefix alone (batching does not matter)
    again = probe.predict(probe.models["mamba"], test, ctx, qry, run.device, batch_size=5)
    torch.testing.assert_close(pred, again, rtol=1e-5, atol=1e-6)
    # the evaluation set is the same for every variant and every call, and nested across lengths
    ctx2, qry2 = probe.eval_set(run, test, 7)
    assert torch.equal(ctx, ctx2) and torch.equal(qry, qry2)
    ctx12, qry12 = probe.eval_set(run, test, 12)
    assert torch.equal(ctx12[:, :7], ctx) and torch.equal(qry12, qry)


def test_killed_run_resumes_to_identical_results(tmp_path, monkeypatch):
    spec = tiny_spec()
    reference = probekit.run(spec, tmp_path / "ref")

    import probekit_mamba._lengthgen as lg

    calls = {"n": 0}
    real = lg.patch_mse

    def dying(pred, target):
        calls["n"] += 1
        if calls["n"] == 10:  # inside the second epoch of the second variant
            raise KeyboardInterrupt("simulated kill")
        return real(pred, target)

    monkeypatch.setattr(lg, "patch_mse", dying)
    with pytest.raises(KeyboardInterrupt):
        probekit.run(spec, tmp_path / "killed")
    assert not (tmp_path / "killed" / "metrics.json").exists()
    monkeypatch.setattr(lg, "patch_mse", real)
    resumed = probekit.run(spec, tmp_path / "killed", resume=True)
    assert resumed == reference
    assert (tmp_path / "killed" / "results.csv").read_text() == (tmp_path / "ref" / "results.csv").read_text()


def test_bad_images_are_clear_errors(tmp_path):
    from PIL import Image

    from probekit import RunError

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.new("L", (10, 8), color=20 * i).save(folder / f"{i}.png")
    spec = tiny_spec()
    spec["data"] = {"type": "folder", "root": str(folder), "channels": 1}
    with pytest.raises(RunError, match="square images"):
        execute(prepare(load_spec(spec), tmp_path / "a"))
    with pytest.raises(RunError, match="smaller than patch_size"):
        execute(prepare(load_spec(tiny_spec(patch_size=9)), tmp_path / "b"))


def test_batch_size_auto_one_size_for_all_variants(tmp_path, monkeypatch):
    limit_memory(monkeypatch, 2**20)  # 1 MiB: a batch < n
    spec = tiny_spec(batch_size="auto", steps_per_epoch=None, epochs=1, eval_lengths=[4], prefix_lengths=[4])
    spec["data"]["limit"] = 300
    run = prepare(load_spec(spec), tmp_path / "r")
    assert run.probe is None
    execute(run)
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "r" / "checkpoints").glob("batch-size-*")]
    assert record["tag"] == "length-generalization"  # the variants see identical batches
    size = record["batch_size"]
    assert 1 < size < 300
    log = (tmp_path / "r" / "log.txt").read_text()
    assert f"batch_size auto (length-generalization): {size} (fits 80% of 1 MiB" in log
    assert run.probe._steps(300, size) == 300 // size
    dry = run.probe.dry_run(run)
    assert dry["steps_per_epoch"] == "training images // the batch size found"
