"""Run every benchmark of the project and print one table of ratios against their baselines.

Each benchmark is a script in this folder that measures its own baseline in the same run. This runner
starts each as a subprocess, keeps its full output in benchmarks/results/<name>.txt, and reads the ratio
lines. Usage: .venv/bin/python benchmarks/run_all.py [name ...]
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# script -> list of (label, regex with one group (the ratio), comparison, target); comparison None = report only
BENCHMARKS: dict[str, list[tuple[str, str, str | None, float]]] = {
    "cli_startup": [("probekit --help / import torch", r"ratio help/torch: ([\d.]+)", "<=", 0.3)],
    "capture_overhead": [("capture all layers / plain forward: {0}", r"^(\S+) .*; ratio ([\d.]+)x", "<=", 1.05)],
    "cache_memory": [("peak RSS, 10x larger cache / smaller", r"ratio large/small: ([\d.]+)", "<=", 1.2)],
    "inversion_training": [
        ("inversion: (recompute / cache) / its bound, {0} blocks", r"^ratio / bound at (\d+) blocks: ([\d.]+)",
         ">=", 0.9),
        ("inversion: recompute / feature cache (wall), {0} blocks",
         r"^ratio / bound at (\d+) blocks: .*recompute / cache ([\d.]+)x", None, 0.0),
    ],
    "mamba_scan": [
        ("mamba: reference / cpu-scan (fwd+bwd)", r"time ratio reference / cpu-scan: ([\d.]+)x", ">=", 50.0),
        ("mamba: scan's fraction of memory bandwidth", r"fraction of memory bandwidth reached by the scan: ([\d.]+)",
         None, 0.0),
        ("mamba: evaluation / training time per token", r"evaluation / training time per token: ([\d.]+)",
         "<=", 1.0),
    ],
    "examples": [("example {0}: wall time / its budget", r"^(\S+): wall / budget ([\d.]+)", "<=", 1.0)],
    "distributed_scaling": [("2 gloo processes speed-up over 1", r"speed-up 1/2 processes: ([\d.]+)x", None, 0.0)],
}


def main(names: list[str]) -> int:
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []
    failed = False
    for name in names or list(BENCHMARKS):
        t = time.time()
        res = subprocess.run([sys.executable, str(HERE / f"{name}.py")], capture_output=True, text=True)
        (out_dir / f"{name}.txt").write_text(res.stdout + res.stderr)
        elapsed = time.time() - t
        if res.returncode != 0:
            rows.append((name, "error", "", f"exit {res.returncode}, see results/{name}.txt"))
            failed = True
            continue
        for label, pattern, op, target in BENCHMARKS[name]:
            matches = list(re.finditer(pattern, res.stdout, re.MULTILINE))
            if not matches:
                rows.append((label, "?", "", f"no ratio line, see results/{name}.txt"))
                failed = True
            for m in matches:
                groups = m.groups()
                value = float(groups[-1])
                text = label.format(*groups[:-1])
                if op is None:
                    rows.append((text, f"{value:.3f}", "report", f"{elapsed:.0f} s"))
                    continue
                ok = value <= target if op == "<=" else value >= target
                failed |= not ok
                rows.append((text, f"{value:.3f}", f"{op} {target}", ("ok" if ok else "MISSES") + f", {elapsed:.0f} s"))
    widths = [max(len(r[i]) for r in [("benchmark", "ratio", "target", "result"), *rows]) for i in range(4)]
    for r in [("benchmark", "ratio", "target", "result"), tuple("-" * w for w in widths), *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
