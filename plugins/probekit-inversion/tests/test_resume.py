"""A run killed with SIGKILL in the middle of training and resumed ends with the results of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

import probekit
from probekit.testing import small_cnn_section

SPEC = {
    "name": "inv-resume",
    "seed": 3,
    "device": "cpu",
    "model": small_cnn_section(),
    "data": {"type": "digits", "limit": 200, "test_limit": 40, "batch_size": 64},
    "probe": {"type": "inversion", "layers": ["2", "6", "9"], "epochs": 6, "batch_size": 16},
}


def test_resume_after_kill_gives_the_same_results(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    killed = tmp_path / "killed"
    env = {**os.environ, "PROBEKIT_CACHE": os.environ["PROBEKIT_CACHE"]}
    proc = subprocess.Popen(
        [sys.executable, "-m", "probekit", "run", str(spec_path), "-o", str(killed), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # kill -9 once the second inverse module has checkpointed an epoch: the first is done, the second half-way
    target = killed / "checkpoints" / "inverse-01-6.pt"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "metrics.json").exists(), "the run finished before it could be killed"
    from probekit import load_checkpoint as load

    state = load(target)
    assert 1 <= state["epoch"] < SPEC["probe"]["epochs"]

    resumed = probekit.run(spec_path, killed, resume=True)
    fresh = probekit.run(spec_path, tmp_path / "fresh")
    assert resumed == fresh
    assert (killed / "results.csv").read_text() == (tmp_path / "fresh" / "results.csv").read_text()
    for name in ("inverse-00-2.pt", "inverse-01-6.pt", "inverse-02-9.pt"):
        a, b = load(killed / "checkpoints" / name), load(tmp_path / "fresh" / "checkpoints" / name)
        assert a["losses"] == b["losses"]
        for key, tensor in a["modules"]["inverse"].items():
            assert (tensor == b["modules"]["inverse"][key]).all(), key


def test_resume_of_a_finished_run_trains_nothing(tmp_path):
    first = probekit.run({**SPEC, "probe": {**SPEC["probe"], "epochs": 1}}, tmp_path / "run")
    stamps = {p.name: p.stat().st_mtime_ns for p in Path(tmp_path / "run" / "checkpoints").glob("*.pt")}
    again = probekit.run({**SPEC, "probe": {**SPEC["probe"], "epochs": 1}}, tmp_path / "run", resume=True)
    assert again == first
    assert stamps == {p.name: p.stat().st_mtime_ns for p in Path(tmp_path / "run" / "checkpoints").glob("*.pt")}
