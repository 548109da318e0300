import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import probekit
from probekit._errors import SpecError
from probekit.testing import read_metrics

RUN_FILES = {"spec.yaml", "metrics.json", "report.md", "report.html", "log.txt", "results.csv"}


def test_run_writes_the_whole_run_directory_and_is_deterministic(tmp_path, digits_spec):
    a = probekit.run(digits_spec(), tmp_path / "a")
    probekit.run(digits_spec(), tmp_path / "b")
    for d in ("a", "b"):
        names = {p.name for p in (tmp_path / d).iterdir()}
        assert RUN_FILES <= names
        assert (tmp_path / d / "figures" / "accuracy_vs_depth.png").stat().st_size > 1000
        assert any((tmp_path / d / "checkpoints").iterdir())
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert set(a["accuracy"]) == {"5", "9"}
    assert a["accuracy"]["9"] > 0.5  # a trained CNN's pooled features separate digits well above chance (0.1)
    resolved = yaml.safe_load((tmp_path / "a" / "spec.yaml").read_text())
    assert resolved["versions"]["probekit"] == probekit.__version__
    assert "torch" in resolved["versions"]
    rows = (tmp_path / "a" / "results.csv").read_text().splitlines()
    assert rows[0] == "layer,metric,value" and len(rows) == 12  # 5 rows per layer, the chance baseline
    assert "<img" in (tmp_path / "a" / "report.html").read_text()
    assert "base64," in (tmp_path / "a" / "report.html").read_text()


def test_existing_run_dir_needs_resume_or_overwrite(tmp_path, digits_spec):
    spec = digits_spec(solver="sgd", epochs=1)
    spec["model"]["train"]["epochs"] = 1
    probekit.run(spec, tmp_path / "r")
    with pytest.raises(SpecError, match="--resume"):
        probekit.run(spec, tmp_path / "r")
    changed = dict(spec, seed=1)
    with pytest.raises(SpecError, match="differs"):
        probekit.run(changed, tmp_path / "r", resume=True)
    again = probekit.run(spec, tmp_path / "r", resume=True)  # finished run: resumes to the same results
    assert again == read_metrics(tmp_path / "r")


def _write_spec(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "probekit", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)


def test_sigkill_during_training_then_resume_gives_identical_metrics(tmp_path, digits_spec):
    spec = digits_spec(solver="sgd", epochs=15)
    spec["model"]["train"]["epochs"] = 4
    path = _write_spec(tmp_path, spec)
    cache = tmp_path / "cache"
    env = {"PROBEKIT_CACHE": str(cache)}
    ref = _cli("run", str(path), "-o", str(tmp_path / "ref"), "-q", env={"PROBEKIT_CACHE": str(tmp_path / "c0")})
    assert ref.returncode == 0, ref.stderr

    for marker in ("model-train.pt", "linear-5.pt"):  # kill during model training, then during probe training
        run_dir = tmp_path / f"killed-{marker}"
        proc = subprocess.Popen([sys.executable, "-m", "probekit", "run", str(path), "-o", str(run_dir), "-q"],
                                env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (run_dir / "checkpoints" / marker).exists():
            assert proc.poll() is None, "run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (run_dir / "metrics.json").exists()
        res = _cli("run", str(path), "-o", str(run_dir), "--resume", "-q", env=env)
        assert res.returncode == 0, res.stderr
        assert read_metrics(run_dir) == read_metrics(tmp_path / "ref")
        cache = tmp_path / "cache2"  # second round: fresh cache, so the model is trained again and killed there
        env = {"PROBEKIT_CACHE": str(cache)}


def test_sigterm_checkpoints_mid_epoch_and_resume_gives_identical_metrics(tmp_path, digits_spec):
    spec = digits_spec(solver="sgd", epochs=15, batch_size=32)
    spec["model"]["train"]["epochs"] = 2
    path = _write_spec(tmp_path, spec)
    ref = _cli("run", str(path), "-o", str(tmp_path / "ref"), "-q", env={"PROBEKIT_CACHE": str(tmp_path / "c0")})
    assert ref.returncode == 0, ref.stderr
    run_dir = tmp_path / "term"
    env = {**os.environ, "PROBEKIT_CACHE": str(tmp_path / "c1")}
    proc = subprocess.Popen([sys.executable, "-m", "probekit", "run", str(path), "-o", str(run_dir), "-q"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "linear-5.pt").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "checkpoint" in err and "--resume" in err
    res = _cli("run", str(path), "-o", str(run_dir), "--resume", "-q", env={"PROBEKIT_CACHE": str(tmp_path / "c1")})
    assert res.returncode == 0, res.stderr
    assert "and step" in (run_dir / "log.txt").read_text()  # resumed inside the interrupted epoch
    assert read_metrics(run_dir) == read_metrics(tmp_path / "ref")


def test_run_without_model_for_a_probe_that_needs_one(tmp_path, digits_spec):
    spec = digits_spec()
    del spec["model"]
    with pytest.raises(SpecError, match="needs a model"):
        probekit.run(spec, tmp_path / "x")


def test_module_adapter_loads_weights_written_in_test(tmp_path):
    import torch
    from safetensors.torch import save_file

    from probekit.testing import small_cnn

    torch.manual_seed(3)
    ref = small_cnn(in_channels=1, width=4)
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    x = torch.rand(2, 1, 8, 8)
    for name in ("w.safetensors", "w.pt"):
        adapter = probekit.create_model("module", factory="probekit.testing:small_cnn",
                                        kwargs={"in_channels": 1, "width": 4}, weights=str(tmp_path / name),
                                        input_shape=(1, 8, 8))
        adapter.model.eval()
        ref.eval()
        out, states = adapter.capture(adapter.preprocess(x), ["11"])
        assert torch.equal(out, ref(x))
        assert torch.equal(states["11"], out)
    layers = adapter.layers()
    assert [la.name for la in layers][:3] == ["0", "1", "2"]
    assert layers[0].kind == "map" and layers[0].shape == (4, 8, 8)
    assert layers[-1].kind == "vector" and layers[-1].shape == (10,)
    assert layers[6].shape == (8, 4, 4)  # after the 2x2 max pool


def test_preprocess_postprocess_roundtrip():
    import torch

    adapter = probekit.create_model("module", factory="probekit.testing:small_cnn",
                                    kwargs={"in_channels": 3}, input_shape=(3, 16, 16),
                                    mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    img = torch.rand(4, 3, 16, 16)
    assert (adapter.postprocess(adapter.preprocess(img)) - img).abs().max() < 1e-6
    gray = torch.rand(2, 1, 16, 16)
    assert adapter.preprocess(gray).shape == (2, 3, 16, 16)  # gray expanded to the model's 3 channels


def test_model_train_weights_are_cached_and_reused(tmp_path, monkeypatch, digits_spec):
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    spec = digits_spec(solver="sgd", epochs=1)
    probekit.run(spec, tmp_path / "one")
    cached = list((tmp_path / "cache" / "models").glob("*.safetensors"))
    assert len(cached) == 1
    probekit.run(spec, tmp_path / "two")
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "loaded cached weights" in log
    assert read_metrics(tmp_path / "one") == \
        read_metrics(tmp_path / "two")


def test_full_disk_fails_cleanly_and_resumes_after_space_is_freed(tmp_path, digits_spec):
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        spec = digits_spec(solver="sgd", epochs=2)
        spec["model"]["train"]["epochs"] = 1
        spec["probe"]["layers"] = ["2", "5", "8", "9"]  # checkpoints of ~0.1-0.3 MB each: the disk fills up
        path = _write_spec(tmp_path, spec)
        env = {"PROBEKIT_CACHE": str(tmp_path / "cache")}
        ref = _cli("run", str(path), "-o", str(tmp_path / "ref"), "-q", env=env)
        assert ref.returncode == 0, ref.stderr
        run_dir = mnt / "run"
        full = _cli("run", str(path), "-o", str(run_dir), "-q", env=env)
        assert full.returncode == 1, full.stderr
        assert "disk is full" in full.stderr and "--resume" in full.stderr and "Traceback" not in full.stderr
        leftovers = [p.name for p in run_dir.rglob("*.tmp")]
        assert leftovers == []  # no half-written files
        for ckpt_file in (run_dir / "checkpoints").glob("*.pt"):
            import torch

            torch.load(ckpt_file, weights_only=True)  # every checkpoint that exists is whole
        assert subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)]).returncode == 0
        res = _cli("run", str(path), "-o", str(run_dir), "--resume", "-q", env=env)
        assert res.returncode == 0, res.stderr
        assert read_metrics(run_dir) == read_metrics(tmp_path / "ref")
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_corrupt_checkpoint_is_detected_and_training_redone(tmp_path, digits_spec):
    spec = digits_spec(solver="sgd", epochs=2)
    spec["model"]["train"]["epochs"] = 1
    first = probekit.run(spec, tmp_path / "r")
    ck = tmp_path / "r" / "checkpoints" / "linear-5.pt"
    ck.write_bytes(ck.read_bytes()[:200])  # truncated, as by a crash of the storage
    again = probekit.run(spec, tmp_path / "r", resume=True)
    assert again == first
    assert (tmp_path / "r" / "checkpoints" / "linear-5.pt.corrupt").exists()
    assert "training again from the start" in (tmp_path / "r" / "log.txt").read_text()


def test_mixed_precision_and_fp16_cache_run(tmp_path, digits_spec):
    spec = digits_spec(solver="sgd", epochs=2)
    spec["model"]["train"]["epochs"] = 1
    spec.update(precision="bf16", cache_dtype="float16")
    results = probekit.run(spec, tmp_path / "r")
    assert results["accuracy"]["9"] > 0.3
    shards = list((tmp_path.parent).rglob("manifest.json"))
    assert any('"float16"' in p.read_text() for p in shards)


def test_kill_at_random_points_then_resume_reproduces_the_results(tmp_path, digits_spec):
    """SIGKILL or SIGTERM at random moments (set-up, model training, feature caching, probe training)."""
    import random

    spec = digits_spec(solver="sgd", epochs=6)
    spec["model"]["train"]["epochs"] = 2
    path = _write_spec(tmp_path, spec)
    t0 = time.time()
    ref = _cli("run", str(path), "-o", str(tmp_path / "ref"), "-q", env={"PROBEKIT_CACHE": str(tmp_path / "c0")})
    assert ref.returncode == 0, ref.stderr
    duration = time.time() - t0
    rng = random.Random(1234)
    for i in range(3):
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
        delay = rng.uniform(0.2, 0.9) * duration
        run_dir, env = tmp_path / f"run{i}", {**os.environ, "PROBEKIT_CACHE": str(tmp_path / f"c{i + 1}")}
        proc = subprocess.Popen([sys.executable, "-m", "probekit", "run", str(path), "-o", str(run_dir), "-q"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
            proc.wait(timeout=120)
        for _ in range(3):  # a SIGTERM during training stops with 143; resume until finished
            res = subprocess.run([sys.executable, "-m", "probekit", "run", str(path), "-o", str(run_dir), "--resume",
                                  "-q"], env=env, capture_output=True, text=True)
            if res.returncode == 0:
                break
        assert res.returncode == 0, (sig, delay, res.stderr)
        assert read_metrics(run_dir) == read_metrics(tmp_path / "ref"), (sig, delay)


def test_run_paths_cannot_leave_the_run_directory(tmp_path, digits_spec):
    from probekit._runner import prepare
    from probekit._spec import load_spec

    run = prepare(load_spec(digits_spec()), tmp_path / "r")
    assert run.path("figures/a.png") == (tmp_path / "r" / "figures" / "a.png").resolve()
    for bad in ("../escape.csv", "/etc/passwd", "figures/../../x"):
        with pytest.raises(ValueError, match="leaves the run directory"):
            run.path(bad)
