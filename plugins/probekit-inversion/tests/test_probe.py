"""The inversion probe through the runner: modular / end-to-end / chained, exact inverses, DETR-like model."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest
import torch
from inversion_helpers import InvertibleAdapter, TinyDetrAdapter
from probekit_inversion.modules import InverseChain
from probekit_inversion.probe import InversionProbe, merge_defaults

import probekit
from probekit import load_spec
from probekit.testing import execute_run as execute
from probekit.testing import limit_memory, small_cnn_section
from probekit.testing import prepare_run as prepare


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def cnn_spec(**probe) -> dict:
    return {
        "name": "inv-cnn",
        "seed": 0,
        "device": "cpu",
        "model": small_cnn_section(),
        "data": {"type": "digits", "limit": 160, "test_limit": 40, "batch_size": 64},
        "probe": {"type": "inversion", "layers": ["2", "6", "9"], "epochs": 2, "batch_size": 32, **probe},
    }


def test_merge_defaults_spec_wins():
    merged = merge_defaults(
        {"architecture": {"depth": 3, "heads": None}},
        [None, {"architecture": {"depth": 1, "heads": 4}}, {"hidden": 99, "epochs": 5}],
    )
    assert merged["architecture"] == {"depth": 3, "heads": 4, "hidden": 99}


def test_modular_direct_and_chained_targets_report_their_tables(tmp_path):
    for name, options in (("both", {}), ("direct", {"mode": "end-to-end"}), ("chained", {"target": "chained"})):
        out = tmp_path / name
        results = probekit.run(cnn_spec(**options), out)
        rows = read_rows(out / "results.csv")
        assert list(rows[0]) == ["layer", "inverse", "metric", "value"]
        kinds = {"both": ["direct", "chained"], "direct": ["direct"], "chained": ["direct", "chained"]}[name]
        expected = {(n, k, m) for n in ("2", "6", "9") for k in kinds for m in ("mse", "psnr", "ssim")}
        expected |= {("mean training image", "baseline", m) for m in ("mse", "psnr", "ssim")}
        if "chained" in kinds:
            expected |= {(n, "module", "loss") for n in ("2", "6", "9")}
        assert {(r["layer"], r["inverse"], r["metric"]) for r in rows} == expected
        assert all(math.isfinite(float(r["value"])) for r in rows)
        assert (out / "figures" / "reconstructions.png").stat().st_size > 1000
        assert (out / "figures" / "error_vs_depth.png").stat().st_size > 1000
        assert "Feature inversion" in (out / "report.md").read_text()
        ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
        direct = ["direct-01-2.pt"] if name != "both" else []  # with cached modular inputs, 2's is its module
        modular = ["inverse-00-2.pt", "inverse-01-6.pt", "inverse-02-9.pt"] if "chained" in kinds else []
        assert ckpts == sorted(direct + ["direct-02-6.pt", "direct-03-9.pt"] + modular)
        assert all((out / "checkpoints" / f"{c}.best").exists() for c in ckpts)  # validation record
        if "chained" in kinds:
            assert set(results["module_loss"]) == {"2", "6", "9"}
        if name == "both":  # the first layer's direct inverse is its modular module: the same numbers
            assert results["direct"]["mse"]["2"] == results["chained"]["mse"]["2"]
        if name == "chained":
            assert len(list((out / "checkpoints" / "chained").iterdir())) >= 2  # predictions of 9->6 and 6->2
        assert set(results["baseline"]) == {"mse", "psnr", "ssim"}
        assert 0 <= results["model_accuracy"] <= 1


def test_best_validation_epoch_is_kept(tmp_path):
    """With a learning rate that diverges, the kept weights are those of the best validation epoch."""
    run = prepare(load_spec(cnn_spec(layers=["2"], epochs=4, lr=0.5, grad_clip=None, inverses=["modular"])),
                  tmp_path / "r")
    execute(run)
    from probekit import load_checkpoint

    record = load_checkpoint(tmp_path / "r" / "checkpoints" / "inverse-00-2.pt.best")
    best = min(range(len(record["val"])), key=record["val"].__getitem__)
    assert record["best"] == best and run.probe.best_epoch["inverse 2->input"] == best + 1
    kept = run.probe.chain.steps[0].state_dict()
    for key, tensor in record["state"]["inverse"].items():
        assert torch.equal(kept[key].cpu(), tensor), key


def test_patience_stops_early(tmp_path):
    run = prepare(load_spec(cnn_spec(layers=["2"], epochs=6, lr=0.5, grad_clip=None, patience=1,
                                     inverses=["modular"])), tmp_path / "r")
    execute(run)
    from probekit import load_checkpoint

    record = load_checkpoint(tmp_path / "r" / "checkpoints" / "inverse-00-2.pt.best")
    since_best = len(record["val"]) - 1 - record["best"]
    assert since_best <= 1  # patience 1: at most one epoch without improvement
    assert record["stopped"] == (since_best >= 1)
    assert len(record["val"]) == 6 or record["stopped"]
    assert len(run.probe.train_losses["inverse 2->input"]) == len(record["val"])


def _exact_fit(self: InversionProbe, run) -> None:
    """Replaces training: the chain is the exact inverse of each layer of the invertible test model."""
    self.plan(run)
    self.chain = InverseChain(run.model.exact_inverses(self.names))
    self.target_var = {s.name: 1.0 for s in self.sites}
    self.inverses = ["modular"]


def test_chain_of_exact_inverses_reproduces_the_input(tmp_path, test_models, monkeypatch):
    monkeypatch.setattr(InversionProbe, "fit", _exact_fit)
    spec = {
        "name": "exact",
        "device": "cpu",
        "model": {"type": "invertible"},
        "data": {"type": "digits", "limit": 32, "test_limit": 24, "batch_size": 16},
        "probe": {
            "type": "inversion",
            "layers": ["lin2", "lin1", "flat", "act"],
            "analyses": ["correlation"],
        },
    }
    results = probekit.run(spec, tmp_path / "run")
    for layer in ("flat", "lin1", "act", "lin2"):
        assert results["chained"]["mse"][layer] < 1e-10
        assert results["module_loss"][layer] < 1e-10
        psnr = results["chained"]["psnr"][layer]
        assert psnr is None or psnr > 80  # None: infinite (exactly zero error) in strict JSON
    rows = read_rows(tmp_path / "run" / "results_correlation.csv")
    by = {(r["layer"], r["decoder"], r["metric"]): float(r["value"]) for r in rows}
    assert by[("lin1", "lin1", "mse")] < 1e-10
    assert by[("lin1", "lin2", "mse")] > 1e-3  # decoding lin1's states with lin2's chain is not exact
    assert len({(r["layer"], r["decoder"]) for r in rows}) == 16  # every layer has the same shape (16,)


def test_chain_of_exact_inverses_direct():
    adapter = InvertibleAdapter(channels=3, size=4, seed=1)
    x = adapter.preprocess(torch.rand(5, 3, 4, 4))
    _, states = adapter.capture(x, ["act"])
    chain = InverseChain(adapter.exact_inverses(["act"]))
    torch.testing.assert_close(adapter.postprocess(chain(states["act"])), adapter.postprocess(x), atol=1e-5, rtol=0)


def test_detr_like_model_end_to_end(tmp_path, test_models):
    spec = {
        "name": "detr-like",
        "device": "cpu",
        "model": {"type": "tinydetr"},
        "data": {"type": "photos", "size": 16, "n": 40, "batch_size": 16},
        "probe": {
            "type": "inversion",
            "layers": "all",
            "inverses": ["modular"],
            "epochs": 1,
            "batch_size": 16,
            "analyses": ["correlation"],
            "architecture": {"heads": 1},
        },
    }
    run = prepare(load_spec(spec), tmp_path / "run")
    results = execute(run)
    probe = run.probe
    # adapter suggestions (tests/inversion_helpers.py: depth 2, hidden 48) fill what the spec leaves unset
    assert (probe.arch.depth, probe.arch.hidden, probe.arch.heads) == (2, 48, 1)
    kinds = [type(step.core).__name__ for step in probe.chain.steps]
    assert kinds == [
        "ConvUpsampler",
        "TokensToMap",
        "TokenBlocks",
        "QueryDecoder",
        "TokenBlocks",
        "MLPInverse",
    ]
    assert len(probe.chain.steps[2].core.blocks.layers) == 2
    names = [layer.name for layer in TinyDetrAdapter().layers()]
    assert set(results["chained"]["mse"]) == set(names)
    rows = read_rows(tmp_path / "run" / "results_correlation.csv")
    pairs = {(r["layer"], r["decoder"]) for r in rows}
    assert ("encoder.0", "encoder.1") in pairs and ("decoder.1", "decoder.0") in pairs
    assert ("backbone", "encoder.0") not in pairs  # shapes differ
    assert (tmp_path / "run" / "figures" / "correlation.png").exists()


def test_detr_plugin_end_to_end(tmp_path):
    """The real DETR adapter of probekit-detr (when installed), tiny config, through the registry."""
    pytest.importorskip("probekit_detr")
    pytest.importorskip("transformers")
    from probekit import get_plugin_manager

    if "detr" not in get_plugin_manager().names("models"):
        pytest.skip("probekit-detr does not register `detr` yet")
    spec = load_spec(
        Path(os.environ.get("PROBEKIT_REPO") or Path(__file__).parents[3]) / "examples" / "detr-inversion.yaml",
        ["probe.epochs=1", "data.n=24", "probe.analyses=[]"],
    )
    results = probekit.run(spec, tmp_path / "run")
    for kind in ("direct", "chained"):
        mse = results[kind]["mse"]
        assert "backbone" in mse and all(math.isfinite(v) for v in mse.values())
    assert (tmp_path / "run" / "figures" / "reconstructions.png").exists()


def test_batch_size_auto_per_module_is_kept_for_resume(tmp_path, monkeypatch):
    import json

    limit_memory(monkeypatch, 2**20)  # 1 MiB: batches < 160
    spec = cnn_spec(layers=["2", "9"], epochs=1, batch_size="auto", inverses=["modular"])
    probekit.run(spec, tmp_path / "r")
    records = {r["tag"]: r for r in (json.loads(p.read_text())
                                     for p in (tmp_path / "r" / "checkpoints").glob("batch-size-*"))}
    assert set(records) == {"inverse 2->input", "inverse 9->2"}
    near_input = records["inverse 2->input"]["batch_size"]
    assert 1 < near_input < 160
    log = (tmp_path / "r" / "log.txt").read_text()
    assert f"batch_size auto (inverse 2->input): {near_input} (fits 80% of 1 MiB" in log
    limit_memory(monkeypatch, 1)
    probekit.run(spec, tmp_path / "r", resume=True)
    log = (tmp_path / "r" / "log.txt").read_text()
    assert f"batch_size auto (inverse 2->input): {near_input}, as chosen before" in log


def test_seeds_give_intervals_on_the_depth_figure(tmp_path):
    spec = {**cnn_spec(layers=["2", "9"], epochs=1), "seeds": [0, 1]}
    results = probekit.run(spec, tmp_path / "s")
    rows = read_rows(tmp_path / "s" / "results.csv")
    combined = [r for r in rows if r["seed"] == "all"]
    assert {"value", "value_std", "value_ci95", "n"} <= set(rows[0])
    direct = {r["layer"]: r for r in combined if r["inverse"] == "direct" and r["metric"] == "mse"}
    for layer in ("2", "9"):
        per_seed = [float(r["value"]) for r in rows if r["seed"] in ("0", "1") and r["layer"] == layer
                    and r["inverse"] == "direct" and r["metric"] == "mse"]
        assert float(direct[layer]["value"]) == pytest.approx(sum(per_seed) / 2)
        assert direct[layer]["n"] == "2"
    assert results["aggregate"]["direct"]["mse"]["9"]["n"] == 2
    assert (tmp_path / "s" / "figures" / "error_vs_depth.png").stat().st_size > 1000
    assert (tmp_path / "s" / "figures" / "reconstructions.png").exists()
    report = (tmp_path / "s" / "report.md").read_text()
    assert "Feature inversion over seeds" in report and "Finding: direct mse from `9`" in report


def test_pick_images_finds_every_class_of_a_class_sorted_test_split():
    class Rows:  # the FeatureSet interface pick_images reads
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.y)

        def batch(self, idx, names):
            return {"input": self.x[idx], "labels": self.y[idx]}

    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat_interleave(100)  # sorted by class, as mnist5k is
    x = torch.rand(1000, 1, 4, 4, generator=g)
    rows = InversionProbe(layers=["a"]).pick_images(Rows(x, y), 12)
    assert sorted(y[rows[:10]].tolist()) == list(range(10)) and len(set(rows)) == 12
