"""Feature-cache memory: peak RSS while reading a cache 10x larger than another.

Writes two caches (N and 10N rows of ViT-tiny-sized token states, 197 x 192 float32),
then reads every row of each, in shuffled batches as a training epoch does, in a
fresh subprocess, and compares the peak resident set sizes. Target: ratio <= 1.2.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROW_SHAPE = (197, 192)
N_SMALL = 256
BATCH = 64


def write(root: Path, key: str, n: int) -> None:
    from probekit import FeatureCache

    rng = np.random.default_rng(0)

    def compute(names):
        for i in range(0, n, BATCH):
            m = min(BATCH, n - i)
            yield {"layer": rng.standard_normal((m, *ROW_SHAPE), dtype=np.float32)}

    FeatureCache(root).get({"layer": key}, compute)


def read(root: str, key: str) -> None:
    import torch

    from probekit import FeatureCache, FeatureSet

    fs = FeatureSet({"layer": FeatureCache(root).open(key)})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = 0.0
    for batch in fs.batches(BATCH, torch.Generator().manual_seed(0)):
        total += float(batch["layer"][:, 0, 0].sum())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": len(fs), "peak_kib": peak, "baseline_kib": before, "checksum": total}))


def measure(root: Path, key: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--read", str(root), key], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> float:
    with tempfile.TemporaryDirectory(dir=os.environ.get("PROBEKIT_BENCH_TMP")) as tmp:
        root = Path(tmp)
        write(root, "small", N_SMALL)
        write(root, "large", 10 * N_SMALL)
        small, large = measure(root, "small"), measure(root, "large")
    row_mib = np.prod(ROW_SHAPE) * 4 / 2**20
    ratio = large["peak_kib"] / small["peak_kib"]
    print(f"cache sizes: {N_SMALL * row_mib:.0f} MiB and {10 * N_SMALL * row_mib:.0f} MiB")
    print(f"peak RSS reading small: {small['peak_kib'] / 1024:.0f} MiB, large: {large['peak_kib'] / 1024:.0f} MiB")
    print(f"ratio large/small: {ratio:.3f} (target <= 1.2) {'OK' if ratio <= 1.2 else 'FAIL'}")
    return ratio


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--read":
        read(sys.argv[2], sys.argv[3])
    else:
        main()
