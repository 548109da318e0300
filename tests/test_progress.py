"""Progress lines on stderr when it is not a terminal (nohup, SLURM, CI): at least every interval
during every stage longer than it, never more often, and none with --quiet."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import yaml

from probekit._progress import Heartbeat, duration, interval_from_env

# a run whose probe fit has a slow loop (counted by run.progress) and whose evaluation has a slow
# stretch without any loop: both stages last about 4 s, four times the interval
SCRIPT = textwrap.dedent("""
    import sys, time
    from probekit.builtin import _linear

    fit, evaluate = _linear.LinearProbe.fit, _linear.LinearProbe.evaluate

    def slow_fit(self, run):
        for _ in run.progress(range(8), desc="slow loop"):
            time.sleep(0.5)
        return fit(self, run)

    def slow_evaluate(self, run):
        time.sleep(4)
        return evaluate(self, run)

    _linear.LinearProbe.fit, _linear.LinearProbe.evaluate = slow_fit, slow_evaluate
    from probekit._cli import main
    sys.exit(main(sys.argv[1:]))
""")

INTERVAL = 1.0


def _run(tmp_path, digits_spec, *extra):
    spec = digits_spec()
    spec["model"].pop("train")
    spec["data"].update(limit=256, test_limit=128)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "slow.py").write_text(SCRIPT)
    env = {**os.environ, "PROBEKIT_PROGRESS_INTERVAL": str(INTERVAL), "PROBEKIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "slow.py"), "run", str(tmp_path / "spec.yaml"),
                             "-o", str(tmp_path / "run"), *extra], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[tuple[float, str]] = []  # (arrival time, line) of stderr, a pipe as under nohup

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    out = proc.stdout.read() if proc.stdout else ""
    proc.wait(timeout=600)
    reader.join()
    assert proc.returncode == 0, "\n".join(x for _, x in lines)
    return out, lines


def test_a_run_outside_a_terminal_writes_progress_lines(tmp_path, digits_spec):
    out, lines = _run(tmp_path, digits_spec)
    text = "\n".join(x for _, x in lines)
    assert "done:" in out
    progress = [(t, x) for t, x in lines if "progress:" in x]
    fit = [x for _, x in progress if "progress: fit" in x]
    evaluate = [x for _, x in progress if "progress: evaluate" in x]
    assert len(fit) >= 2 and len(evaluate) >= 2, text
    # the loop's line: stage and its time, loop, done/total, share, rate, ETA
    assert any(re.search(r"progress: fit \d+:\d\d \| slow loop: \d/8 \(\d+%\), [\d.]+(/s| s each), ETA 0:0\d", x)
               for x in fit), text
    assert any(re.search(r"progress: evaluate \d+:\d\d$", x) for x in evaluate), text  # no loop: the stage
    start = next(t for t, x in lines if "run 't'" in x)
    end = next(t for t, x in lines if "finished in" in x)
    during = [t for t, _ in lines if start <= t <= end]
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert max(gaps) <= 2.5 * INTERVAL, (gaps, text)  # at least one line every interval (+ scheduling)
    for t, _ in progress:  # never more often than the interval after the line before
        before = max(u for u, _ in lines if u < t)
        assert t - before >= 0.9 * INTERVAL, text


def test_quiet_writes_no_progress(tmp_path, digits_spec, monkeypatch, capfd):
    from probekit._cli import main
    from probekit.builtin import _linear

    evaluate = _linear.LinearProbe.evaluate

    def slow_evaluate(self, run):
        time.sleep(1.5)
        return evaluate(self, run)

    monkeypatch.setattr(_linear.LinearProbe, "evaluate", slow_evaluate)
    monkeypatch.setenv("PROBEKIT_PROGRESS_INTERVAL", "0.2")
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    spec = digits_spec()
    spec["model"].pop("train")
    spec["data"].update(limit=256, test_limit=128)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(tmp_path / "spec.yaml"), "-o", str(tmp_path / "run"), "-q"]) == 0
    assert "progress:" not in capfd.readouterr().err


def test_heartbeat_counts_nested_loops():
    beat = Heartbeat(interval=30, stream=io.StringIO())
    beat.stage("fit")
    for i in beat.wrap(range(3), desc="epochs"):
        for j in beat.wrap(iter(range(10)), total=10, desc="batches"):
            if i == 1 and j == 5:
                line = beat.line()
    assert re.fullmatch(r"progress: fit 0:00 \| epochs: 1/3; batches: 5/10 \(50%\), .+, ETA 0:00", line), line
    assert beat.line() == "progress: fit 0:00"  # finished loops are gone


def test_interval_and_durations(monkeypatch):
    monkeypatch.delenv("PROBEKIT_PROGRESS_INTERVAL", raising=False)
    assert interval_from_env() == 30
    monkeypatch.setenv("PROBEKIT_PROGRESS_INTERVAL", "0.5")
    assert interval_from_env() == 0.5
    monkeypatch.setenv("PROBEKIT_PROGRESS_INTERVAL", "soon")
    assert interval_from_env() == 30
    assert [duration(s) for s in (0, 59.6, 61, 3600 + 62)] == ["0:00", "1:00", "1:01", "1:01:02"]
