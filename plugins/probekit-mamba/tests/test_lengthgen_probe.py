"""The length-generalization probe end to end: options, training, prefixes, resume, outputs."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from probekit_mamba._lengthgen_options import LengthGenOptions
from probekit_mamba._seqmodels import extract_patches

import probekit
from probekit import SpecError, load_spec
from probekit.testing import execute_run as execute
from probekit.testing import limit_memory
from probekit.testing import prepare_run as prepare


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

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
                                      dt_scaling=True)), tmp_path / "r")
    results = execute(run)
    with open(tmp_path / "r" / "results.csv") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    assert header == ["variant", "length", "mse"]
    assert [(r[0], int(r[1])) for r in rows] == [
        (v, n) for v in ("mamba", "mamba-length-adaptive", "transformer") for n in (2, 4, 6, 12)]
    assert all(0 < float(r[2]) < 1 for r in rows)
    for fig in ("error_vs_length.png", "prefix_reconstructions.png"):
        assert (tmp_path / "r" / "figures" / fig).stat().st_size > 5000
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(metrics["mse_train_range"]) == {"mamba", "mamba-length-adaptive", "transformer"}
    by = {(r[0], int(r[1])): float(r[2]) for r in rows}
    assert metrics["mse_at_longest_train"]["mamba"] == pytest.approx(by["mamba", 6])
    assert metrics["mse_beyond"]["transformer"] == pytest.approx(by["transformer", 12])
    assert metrics["mse_train_range"]["mamba"] == pytest.approx((by["mamba", 2] + by["mamba", 4]
                                                                 + by["mamba", 6]) / 3)
    assert set(metrics["findings"]) == {"mamba_beyond_worse_than_longest_train",
                                        "adaptive_better_in_train_range"}
    assert set(metrics["prefix_mse_example_image"]["transformer"]) == {"1", "4", "12"}
    assert results == metrics
    # the mean-image reference, recomputed from the probe's evaluation sets
    probe = run.probe
    train, test = probe.images(run, "train"), probe.images(run, "test")[:24]
    mean_image = train.mean(0, keepdim=True).expand_as(test)
    expected = []
    for length in (2, 4, 6, 12):
        _, qry = probe.eval_set(run, test, length)
        expected.append(float(((extract_patches(mean_image, qry, 2) - extract_patches(test, qry, 2)) ** 2).mean()))
    assert metrics["mse_mean_image_baseline"] == pytest.approx(sum(expected) / 4, rel=1e-6)
    assert metrics["mse_mean_image_baseline"] < float((test ** 2).mean())  # better than predicting zeros
    assert "Length generalisation" in (tmp_path / "r" / "report.md").read_text()
    # each variant trained and checkpointed
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == [
        "lengthgen-mamba-length-adaptive.pt", "lengthgen-mamba.pt", "lengthgen-transformer.pt"]


def test_training_reduces_the_loss(tmp_path):
    spec = tiny_spec(epochs=4, steps_per_epoch=6, lr=1e-2, eval_lengths=[4], prefix_lengths=[4])
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
