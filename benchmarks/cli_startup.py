"""CLI start-up: wall time of `probekit --help` over `python -c "import torch"`.

Target: at most 0.3 (the CLI must not import torch or any model library to answer).
Both are measured in this run, interleaved, median of N repeats.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

REPEATS = 7


def _time(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> float:
    help_cmd = [sys.executable, "-m", "probekit", "--help"]
    plugins_cmd = [sys.executable, "-m", "probekit", "plugins"]
    torch_cmd = [sys.executable, "-c", "import torch"]
    _time(torch_cmd)  # warm the file cache for both
    _time(help_cmd)
    helps, plugins, torches = [], [], []
    for _ in range(REPEATS):
        helps.append(_time(help_cmd))
        plugins.append(_time(plugins_cmd))
        torches.append(_time(torch_cmd))
    h, p, t = statistics.median(helps), statistics.median(plugins), statistics.median(torches)
    ratio = h / t
    print(f"probekit --help      {h * 1000:8.1f} ms (median of {REPEATS})")
    print(f"probekit plugins     {p * 1000:8.1f} ms")
    print(f"python -c 'import torch' {t * 1000:8.1f} ms")
    print(f"ratio help/torch: {ratio:.3f} (target <= 0.3) {'OK' if ratio <= 0.3 else 'FAIL'}")
    print(f"ratio plugins/torch: {p / t:.3f}")
    return ratio


if __name__ == "__main__":
    main()
