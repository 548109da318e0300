"""Every shipped example, run as shipped, against the time budget in its header (`# minutes: N`).

Each example runs once as `probekit run examples/<name>.yaml` (with the `--set` options of its header's
`# offline:` line, where the example needs a local file offline) in a fresh run directory with a fresh
(cold) cache, as a new user's first run would; the wall time and the CPU time of the run (the child
process and its children) are printed beside the budget. The machine's load average is printed before
and after each run, since on a shared machine other work slows the runs down.

Usage: .venv/bin/python benchmarks/examples.py [name ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def budget_minutes(spec: Path) -> float | None:
    """The budget an example's header states (`# minutes: N`), or None."""
    m = re.search(r"^# minutes: ([\d.]+)", spec.read_text(), flags=re.M)
    return float(m[1]) if m else None


def offline_overrides(spec: Path) -> list[str]:
    """The `--set` options an example's header gives for running offline (`# offline: --set ...`)."""
    m = re.search(r"^# offline: (.*)$", spec.read_text(), flags=re.M)
    return shlex.split(m[1]) if m else []


def run_example(spec: Path, work: Path) -> tuple[float, float, int, str]:
    """Run one example cold; return (wall s, CPU s, exit status, the last lines of stderr)."""
    env = {**os.environ, "PROBEKIT_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "probekit", "run", str(spec), "-o", str(work / "run"), "-q",
                          *offline_overrides(spec)], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, res.returncode, res.stderr[-1500:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="examples to run (default: all of examples/)")
    parser.add_argument("--keep", type=Path, help="keep the run directories under this folder")
    args = parser.parse_args()
    specs = sorted((ROOT / "examples").glob("*.yaml"))
    if args.names:
        specs = [s for s in specs if s.stem in args.names]
    print(f"{os.cpu_count()} CPUs; each example cold (fresh cache), as shipped")
    print(f"{'example':24s} {'wall min':>9s} {'CPU min':>8s} {'budget':>7s}  {'load before/after':>17s}")
    over = failed = 0
    for spec in specs:
        budget = budget_minutes(spec)
        load0 = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            work = args.keep / spec.stem if args.keep else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            wall, cpu, code, err = run_example(spec, work)
        load1 = os.getloadavg()[0]
        if code != 0:
            failed += 1
            print(f"{spec.stem}: failed (exit {code}):\n{err}")
            continue
        print(f"{spec.stem:24s} {wall / 60:9.2f} {cpu / 60:8.2f} {budget or float('nan'):7.1f}  "
              f"{load0:8.1f}/{load1:<8.1f}")
        if budget:
            print(f"{spec.stem}: wall / budget {wall / 60 / budget:.3f}")
            over += wall / 60 > budget
    print(f"examples within budget: {len(specs) - over - failed}/{len(specs)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
