import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SPEC = {
    "name": "ddp", "seed": 0, "device": "cpu",
    "model": {"type": "module", "factory": "probekit.testing:mlp", "kwargs": {"in_features": 64, "hidden": 32},
              "train": {"epochs": 2, "batch_size": 64}},
    "data": {"type": "digits", "batch_size": 128},
    "probe": {"type": "linear", "layers": ["2", "4"], "epochs": 3, "batch_size": 64},
}


def _run(tmp_path, name, *extra):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    env = {**os.environ, "PROBEKIT_CACHE": str(tmp_path / f"cache-{name}")}
    res = subprocess.run([sys.executable, "-m", "probekit", "run", str(spec), "-o", str(tmp_path / name), "-q",
                          *extra], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((tmp_path / name / "metrics.json").read_text()), res


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        elif isinstance(v, float):
            yield f"{prefix}{k}", v


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    one, _ = _run(tmp_path, "one")
    two, res = _run(tmp_path, "two", "--nproc", "2")
    a, b = dict(_flat(one)), dict(_flat(two))
    assert a.keys() == b.keys() and a
    for k in a:
        assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (k, a[k], b[k])
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "2 processes" in log
    assert res.stdout.count("done:") == 1  # only rank 0 reports


EXAMPLES = {
    # example -> (plugin package, --set overrides that keep it small)
    "tradeoff-mnist": ("probekit_tradeoff", ["probe.latents=[2,16]", "probe.lambdas=[0,1]", "probe.epochs=2",
                                             "data.limit=1000"]),
    "vit-inversion": ("probekit_inversion", ["probe.epochs=2", "model.train.epochs=2", "data.n=256", "threads=1"]),
}


def _example(tmp_path, example, name, overrides, *extra):
    env = {**os.environ, "PROBEKIT_CACHE": str(tmp_path / f"cache-{name}")}
    spec = Path(__file__).resolve().parents[1] / "examples" / f"{example}.yaml"
    sets = [a for o in [*overrides, "device=cpu"] for a in ("--set", o)]
    res = subprocess.run([sys.executable, "-m", "probekit", "run", str(spec), "-o", str(tmp_path / name), "-q",
                          *sets, *extra], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((tmp_path / name / "metrics.json").read_text())


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_examples_with_two_processes_match_one_process(tmp_path, example):
    package, overrides = EXAMPLES[example]
    pytest.importorskip(package)
    one = dict(_flat(_example(tmp_path, example, "one", overrides)))
    two = dict(_flat(_example(tmp_path, example, "two", overrides, "--nproc", "2")))
    assert one.keys() == two.keys() and len(one) > 5
    for k in one:
        assert abs(one[k] - two[k]) <= 1e-5 * max(abs(one[k]), 1e-3), (k, one[k], two[k])
