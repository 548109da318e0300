"""The tradeoff probe end to end on the offline digits data: outputs, resume, baselines, attach."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from probekit_tradeoff._probe import COLUMNS, load_point_weights

from probekit import SpecError, load_spec
from probekit.testing import execute_run as execute
from probekit.testing import limit_memory
from probekit.testing import prepare_run as prepare

ROOT = Path(os.environ.get("PROBEKIT_REPO") or Path(__file__).resolve().parents[3])  # repository root


def _spec(**probe: Any) -> dict[str, Any]:
    base = {
        "type": "tradeoff",
        "families": ["fc-small"],
        "latents": [2, 8],
        "lambdas": [0.0, 1.0],
        "epochs": 2,
        "batch_size": 64,
        "reconstructions": 4,
    }
    base.update(probe)
    return {"name": "t", "seed": 0, "device": "cpu", "data": {"type": "digits"}, "probe": base}


def _run(spec: dict[str, Any], run_dir: Path) -> Any:
    run = prepare(load_spec(spec), run_dir, quiet=True)
    execute(run)
    return run


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_spec_needs_no_model_and_checks_options() -> None:
    loaded = load_spec(_spec())
    assert loaded.spec.model is None
    assert loaded.options["probe"]["families"] == ["fc-small"]
    with pytest.raises(SpecError, match="lambdas"):
        load_spec(_spec(lambdas=[0.0, 1.5]))
    with pytest.raises(SpecError, match="families"):
        load_spec(_spec(families=["fc-huge"]))
    with pytest.raises(SpecError, match=r"probe: .*vit-tiny's latent size is its token width.*\[2\]"):
        load_spec(_spec(families=["fc-small", "vit-tiny"], latents=[2, 8]))
    with pytest.raises(SpecError, match="vit-tiny"):
        load_spec(
            _spec(
                families=["vit-tiny"],
                encoder={"model": {"type": "module", "factory": "probekit.testing:small_cnn"}, "layer": "5"},
            )
        )
    with pytest.raises(SpecError, match="probe.encoder.model.*unknown key 'widht'"):
        load_spec(
            _spec(
                encoder={
                    "model": {"type": "module", "factory": "probekit.testing:small_cnn", "widht": 3},
                    "layer": "5",
                }
            )
        )


def test_outputs_and_numbers(tmp_path: Path) -> None:
    run = _run(_spec(), tmp_path / "run")
    rows = _rows(tmp_path / "run" / "results.csv")
    assert list(rows[0]) == COLUMNS
    points = [r for r in rows if r["family"] == "fc-small"]
    assert [(r["latent"], r["lambda"]) for r in points] == [
        ("2", "0.0"),
        ("2", "1.0"),
        ("8", "0.0"),
        ("8", "1.0"),
    ]
    assert sorted((r["family"], r["latent"]) for r in rows if r["family"] != "fc-small") == [
        ("pca", "2"),
        ("pca", "8"),
        ("random", "2"),
        ("random", "8"),
        ("trivial", ""),
    ]
    for name in ("pareto.png", "vs_lambda.png", "reconstructions.png", "accuracy_drop.png"):
        assert (tmp_path / "run" / "figures" / name).stat().st_size > 5000
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["points"] == 4
    curve = metrics["curves"]["fc-small"]["L8"]
    assert list(curve) == ["lambda=0", "lambda=1", "peaks"]
    assert 0.3 < curve["lambda=1"]["readout_accuracy"] <= 1.0  # logistic regression on the frozen 8-d latent
    accs = [curve[k]["accuracy"] for k in ("lambda=0", "lambda=1")]
    assert curve["peaks"]["drop_from_best"] == pytest.approx(max(accs) - accs[-1])
    summ = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summ["seeds"] == [0] and summ["curves"]["fc-small"]["L8"]["lambda=1"]["accuracy"]["n"] == 1
    finding = summ["findings"]["fc-small"]["larger_latent_loses_less_accuracy"]
    assert finding["tested"] is False and "one seed: not tested" in finding["text"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "**The curves**" in report and "not tested (one seed)" in report

    # the trivial baselines: majority class of the training labels, mean training image
    trivial = next(r for r in rows if r["family"] == "trivial")
    train_labels = torch.tensor([int(run.data.train[i][1]) for i in range(len(run.data.train))])
    test_labels = torch.tensor([int(run.data.test[i][1]) for i in range(len(run.data.test))])
    majority = int(torch.bincount(train_labels).argmax())
    assert float(trivial["accuracy"]) == pytest.approx(float((test_labels == majority).double().mean()))
    train_x = torch.stack([run.data.train[i][0] for i in range(len(run.data.train))]).double() * 2 - 1
    test_x = torch.stack([run.data.test[i][0] for i in range(len(run.data.test))]).double() * 2 - 1
    assert float(trivial["test_mse"]) == pytest.approx(float(((test_x - train_x.mean(0)) ** 2).mean()), rel=1e-9)

    # the reported numbers are those of the saved model, recomputed independently here
    from probekit_tradeoff._models import build_model

    model = build_model("fc-small", 8, in_shape=(1, 8, 8), image_shape=(1, 8, 8), num_classes=10)
    model.load_state_dict(load_point_weights(tmp_path / "run", "fc-small", 8, 1.0))
    model.eval()
    images = torch.stack([run.data.test[i][0] for i in range(len(run.data.test))])
    labels = torch.stack([torch.as_tensor(run.data.test[i][1]) for i in range(len(run.data.test))])
    with torch.no_grad():
        z = model.encoder(images * 2 - 1)
        mse = float(((model.decoder(z) - (images * 2 - 1)) ** 2).mean())
        acc = float((model.classifier(z).argmax(1) == labels).float().mean())
    row = next(r for r in points if r["latent"] == "8" and r["lambda"] == "1.0")
    assert float(row["test_mse"]) == pytest.approx(mse, rel=1e-5)
    assert float(row["accuracy"]) == pytest.approx(acc, abs=1e-9)
    # λ=0 trains the encoder for classification only: the classifier beats the λ=1 autoencoder's
    # linear readout of an 8-d code even after two epochs
    acc0 = float(next(r for r in points if r["latent"] == "8" and r["lambda"] == "0.0")["accuracy"])
    assert acc0 > acc


def _wait_and_kill(proc: subprocess.Popen, ckpt: Path, timeout: float = 240) -> None:
    """SIGKILL the run while a point is mid-training, after at least one point has finished."""
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            pytest.fail("the run finished before it could be killed; make the test sweep longer")
        if list(ckpt.glob("tradeoff-*-lam*.json")) and list(ckpt.glob("tradeoff-*.pt")):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.01)
    proc.kill()
    pytest.fail("no checkpoint appeared in time")


def test_sigkill_and_resume_give_the_same_results(tmp_path: Path) -> None:
    import yaml

    spec = _spec(latents=[3], lambdas=[0.0, 0.5, 1.0], epochs=5, reconstructions=0, baselines=[])
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "probekit", "run", str(path), "-q", "-o"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _run(spec, tmp_path / "full")  # the uninterrupted reference, in this process

    proc = subprocess.Popen(cmd + [str(tmp_path / "killed")], env=env)
    _wait_and_kill(proc, tmp_path / "killed" / "checkpoints")
    finished = list((tmp_path / "killed" / "checkpoints").glob("tradeoff-*-lam*.json"))
    # killed mid-sweep: some points finished, one training checkpoint left, no results yet
    assert len(finished) >= 1 and not (tmp_path / "killed" / "results.csv").exists()
    assert list((tmp_path / "killed" / "checkpoints").glob("tradeoff-*.pt"))
    subprocess.run(cmd + [str(tmp_path / "killed"), "--resume"], check=True, env=env, timeout=600)
    assert (tmp_path / "killed" / "results.csv").read_text() == (
        tmp_path / "full" / "results.csv"
    ).read_text()
    assert "resumed after epoch" in (tmp_path / "killed" / "log.txt").read_text()


def test_baselines_match_references() -> None:
    from probekit_tradeoff._baselines import baseline, pca_codes, random_codes
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    train = torch.rand(300, 20, generator=g) * 2 - 1
    test = torch.rand(80, 20, generator=g) * 2 - 1
    _, _, _, rec = pca_codes(train, test, 5)
    pca = PCA(5).fit(train.double().numpy())
    ref = pca.inverse_transform(pca.transform(test.double().numpy()))
    torch.testing.assert_close(rec.double(), torch.from_numpy(ref), rtol=1e-4, atol=1e-5)
    # a full-rank code reconstructs exactly, PCA and random alike
    for codes in (
        pca_codes(train, test, 20),
        random_codes(train, test, 20, torch.Generator().manual_seed(1)),
    ):
        assert float(((codes[3] - test) ** 2).mean()) < 1e-8
    # the random projection's reconstruction is the least-squares one: better than any other affine map
    ctr, cte, rtr, rte = random_codes(train, test, 4, torch.Generator().manual_seed(2))
    residual = train - rtr
    design = torch.cat([ctr, torch.ones(len(ctr), 1)], 1)
    assert float((design.T @ residual).abs().max()) < 1e-3  # normal equations hold
    labels = torch.arange(300) % 3
    row = baseline("pca", 5, train, labels, test, torch.arange(80) % 3, 3, seed=0, max_iter=100)
    assert set(row) >= {"test_mse", "test_ce", "accuracy"} and 0 <= row["accuracy"] <= 1


def _attach_spec(layer: str, trainable: bool, families: list[str]) -> dict[str, Any]:
    return _spec(
        families=families,
        latents=[4],
        lambdas=[0.0, 1.0],
        epochs=1,
        baselines=[],
        reconstructions=0,
        encoder={
            "model": {"type": "module", "factory": "probekit.testing:small_cnn", "kwargs": {"width": 8}},
            "layer": layer,
            "trainable": trainable,
        },
    )


def test_attach_frozen_layer(tmp_path: Path) -> None:
    run = _run(_attach_spec("5", False, ["fc-small", "cnn-small"]), tmp_path / "run")
    attached = run.probe._attached
    assert attached.in_shape == (16, 8, 8)
    assert all(not p.requires_grad for p in attached.adapter.model.parameters())
    rows = _rows(tmp_path / "run" / "results.csv")
    assert [(r["family"], r["lambda"]) for r in rows] == [
        ("fc-small", "0.0"),
        ("fc-small", "1.0"),
        ("cnn-small", "0.0"),
        ("cnn-small", "1.0"),
        ("trivial", ""),  # the trivial baselines are always there, even with `baselines: []`
    ]
    # the states fed to the encoder are the adapter's, read back from the feature cache
    images = torch.stack([run.data.test[i][0] for i in range(3)])
    with torch.no_grad():
        expected = attached.states(images)
    inputs, _ = attached.inputs(None, "test", run.probe)
    torch.testing.assert_close(inputs(torch.arange(3)), expected)


def test_attach_trainable_layer(tmp_path: Path) -> None:
    run = _run(_attach_spec("2", True, ["fc-small"]), tmp_path / "run")
    attached = run.probe._attached
    tuned = {k: v.clone() for k, v in attached.adapter.model.state_dict().items()}
    changed = [
        k for k, v in tuned.items() if v.is_floating_point() and not torch.equal(v, attached.initial_state[k])
    ]
    assert "0.weight" in changed  # the conv before the layer was fine-tuned ...
    assert "11.weight" not in changed  # ... the head after it gets no gradient
    attached.reset()
    assert torch.equal(attached.adapter.model.state_dict()["0.weight"], attached.initial_state["0.weight"])


def test_unknown_layer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="unknown layer 'nope'"):
        _run(_attach_spec("nope", False, ["fc-small"]), tmp_path / "run")


@pytest.mark.slow
def test_example_reproduces_the_finding(tmp_path: Path) -> None:
    """examples/tradeoff-mnist.yaml (3 seeds): for both latents accuracy falls from its peak to λ=1 and MSE
    falls from λ=0 to λ=1, and the larger latent loses less accuracy from its best λ, each with separate
    95 % intervals (several minutes on 2 cores)."""
    from probekit import run as run_spec

    run_spec(ROOT / "examples" / "tradeoff-mnist.yaml", tmp_path / "run")
    summ = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summ["seeds"] == [0, 1, 2]
    found = summ["findings"]["fc-medium"]
    for L in ("L2", "L16"):
        assert found[L]["accuracy_falls_to_lambda_max"]["holds"] is True, found[L]
        assert found[L]["mse_falls_with_lambda"]["holds"] is True, found[L]
    assert found["larger_latent_loses_less_accuracy"]["holds"] is True, found
    for name in ("pareto.png", "vs_lambda.png", "accuracy_drop.png", "reconstructions.png"):
        assert (tmp_path / "run" / "figures" / name).exists()


def test_batch_size_auto_is_searched_once_per_model_and_matches_that_number(tmp_path: Path, monkeypatch) -> None:
    limit_memory(monkeypatch, 2**18)  # 0.25 MiB: a batch < n
    spec = _spec(latents=[2], epochs=1, batch_size="auto", baselines=[])
    spec["data"]["limit"] = 400
    _run(spec, tmp_path / "auto")
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "auto" / "checkpoints").glob("batch-size-*")]
    assert record["tag"] == "tradeoff fc-small L2"  # one size for both lambdas: a paired comparison
    size = record["batch_size"]
    assert 1 < size < 400
    assert f"batch_size auto (tradeoff fc-small L2): {size} (fits 80% of 0.25 MiB" in (
        tmp_path / "auto" / "log.txt").read_text()
    spec["probe"]["batch_size"] = size
    _run(spec, tmp_path / "number")
    assert _rows(tmp_path / "auto" / "results.csv") == _rows(tmp_path / "number" / "results.csv")


def test_points_spread_over_two_processes_give_one_process_results(tmp_path: Path) -> None:
    """distribute: points — each of 2 gloo processes trains its own sweep points alone and checkpoints
    them itself; the results equal one process's, and a resume trains nothing again."""
    import yaml

    spec = _spec(latents=[2, 3], lambdas=[0.0, 1.0], reconstructions=2, baselines=[], distribute="points")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    _run(spec, tmp_path / "one")
    cmd = [sys.executable, "-m", "probekit", "run", str(path), "-q", "--nproc", "2", "-o", str(tmp_path / "two")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "two" / "results.csv").read_text() == (tmp_path / "one" / "results.csv").read_text()
    # every point's result file is in the run directory, whichever process trained it
    assert len(list((tmp_path / "two" / "checkpoints").glob("tradeoff-*-lam*.json"))) == 4
    log = (tmp_path / "two" / "log.txt").read_text()
    assert log.count("tradeoff [") == 4 and "2 processes" in log
    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "two" / "results.csv").read_text() == (tmp_path / "one" / "results.csv").read_text()
    assert "epoch 1/2" not in (tmp_path / "two" / "log.txt").read_text().split("(resumed)")[-1]
