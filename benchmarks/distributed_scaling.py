"""Distributed scaling: wall time of a training run with 1 process over the same run with 2 gloo processes.

Both runs train the same models with the same global batch (a linear probe over the layers of an MLP on
digits, from a warm feature cache), so the ratio is the speed-up from data parallelism on this machine,
and the script checks that both give the same metrics. On 2 CPU cores expect at most ~2x; the gain
grows with the work per step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SPEC = {
    "name": "ddp-bench", "seed": 0, "device": "cpu",
    "model": {"type": "module", "factory": "probekit.testing:mlp",
              "kwargs": {"in_features": 784, "hidden": 512, "depth": 3}},
    "data": {"type": "mnist5k", "batch_size": 500},
    "probe": {"type": "linear", "layers": ["2", "4", "6"], "epochs": 10, "batch_size": 1000, "pool": "flatten"},
}


def _run(tmp: Path, name: str, nproc: int) -> tuple[float, dict]:
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    cmd = [sys.executable, "-m", "probekit", "run", str(spec), "-o", str(tmp / name), "-q", "--overwrite"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "PROBEKIT_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t, json.loads((tmp / name / "metrics.json").read_text())


def main() -> float:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _run(tmp, "warm", 1)  # fills the feature cache, so both timed runs only train
        t1, m1 = _run(tmp, "one", 1)
        t2, m2 = _run(tmp, "two", 2)
    same = all(abs(m1["accuracy"][k] - m2["accuracy"][k]) <= 1e-5 for k in m1["accuracy"])
    ratio = t1 / t2
    print(f"1 process: {t1:.1f} s, 2 processes: {t2:.1f} s (same global batch; OMP_NUM_THREADS=1 each)")
    print(f"metrics equal within 1e-5: {same}")
    print(f"speed-up 1/2 processes: {ratio:.2f}x (report only; 2 cores at most 2x)")
    return ratio


if __name__ == "__main__":
    main()
