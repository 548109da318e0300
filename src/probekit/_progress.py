"""Progress lines on stderr for runs whose stderr is not a terminal (nohup, SLURM, CI).

Progress bars need a terminal; elsewhere a run would be silent for as long as a stage takes.
`Heartbeat` keeps what the run is doing (its stage and the loops `Run.progress` wraps) and, from a
background thread, writes one line when nothing was written to stderr for `interval` seconds:

    [12:04:31] progress: fit 2:05 | linear 5/10: 21/45 (47%), 3.1/s, ETA 0:08

So a stage longer than the interval gets a line at least every interval (plus a fraction of it),
and never more often than that. The interval is 30 s; `PROBEKIT_PROGRESS_INTERVAL` (seconds)
changes it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

DEFAULT_INTERVAL = 30.0
ENV_INTERVAL = "PROBEKIT_PROGRESS_INTERVAL"


def interval_from_env() -> float:
    """The progress interval in seconds: `PROBEKIT_PROGRESS_INTERVAL`, else 30 (also for a bad value)."""
    try:
        value = float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


def duration(seconds: float) -> str:
    """`seconds` as `m:ss`, or `h:mm:ss` from an hour on."""
    seconds = max(int(round(seconds)), 0)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class _Loop:
    desc: str
    total: int | None
    start: float = field(default_factory=time.monotonic)
    done: int = 0

    def text(self, now: float, *, detail: bool) -> str:
        name = self.desc or "loop"
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        if not detail:
            return f"{name}: {count}"
        parts = [f"{name}: {count}" + (f" ({100 * self.done / self.total:.0f}%)" if self.total else "")]
        elapsed = now - self.start
        if self.done and elapsed > 0:
            rate = self.done / elapsed
            parts.append(f"{rate:.3g}/s" if rate >= 1 else f"{1 / rate:.3g} s each")
            if self.total:
                parts.append(f"ETA {duration((self.total - self.done) / rate)}")
        return ", ".join(parts)


class Heartbeat:
    """The state of a run for progress lines, and the thread that writes them (see the module)."""

    def __init__(self, interval: float | None = None, stream: IO[str] | None = None) -> None:
        self.interval = interval if interval is not None else interval_from_env()
        self.stream = stream
        self._stage = "starting"
        self._stage_start = time.monotonic()
        self._loops: list[_Loop] = []
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the run tells it ---------------------------------------------------------
    def stage(self, name: str) -> None:
        """The run entered stage `name` (data, model, fit, evaluate, report)."""
        with self._lock:
            self._stage, self._stage_start = name, time.monotonic()

    def printed(self) -> None:
        """A line went to stderr: the next progress line is due an interval from now."""
        self._last = time.monotonic()

    def wrap(self, iterable: Iterable[Any], *, total: int | None = None, desc: str = "") -> Iterator[Any]:
        """Yield from `iterable`, counting the items for the progress lines."""
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        loop = _Loop(desc, total)
        with self._lock:
            self._loops.append(loop)
        try:
            for item in iterable:
                yield item
                loop.done += 1
        finally:
            with self._lock:
                if loop in self._loops:
                    self._loops.remove(loop)

    # -- the line and the thread ---------------------------------------------------------
    def line(self) -> str:
        """The progress line for now (without the time stamp)."""
        now = time.monotonic()
        with self._lock:
            loops = list(self._loops)
            text = f"progress: {self._stage} {duration(now - self._stage_start)}"
        if loops:  # outer loops by their count, the innermost with its rate and ETA
            text += " | " + "; ".join(lp.text(now, detail=lp is loops[-1]) for lp in loops)
        return text

    def start(self) -> Heartbeat:
        """Start writing lines from a daemon thread; returns self."""
        if self._thread is None:
            self._stop.clear()
            self._last = time.monotonic()
            self._thread = threading.Thread(target=self._beat, name="probekit-progress", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (waits for it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _beat(self) -> None:
        tick = min(max(self.interval / 10, 0.05), 1.0)
        while not self._stop.wait(tick):
            if time.monotonic() - self._last < self.interval:
                continue
            stream = self.stream if self.stream is not None else sys.stderr
            try:
                print(f"[{time.strftime('%H:%M:%S')}] {self.line()}", file=stream, flush=True)
            except (OSError, ValueError):  # stderr closed or gone: nothing to tell any more
                return
            self.printed()
