"""Where probekit may write, and who owns a run directory.

Writes confined: while a run is active, every file the runner, probes, checkpoints and the log
write passes `check_write`, which refuses a path outside the run directory and the cache, and a
path inside the run directory that goes through a symbolic link (`log.txt`, `checkpoints/` or any
other part pointing elsewhere). `open_append` opens the log with no-follow semantics.

Run-directory ownership: a run directory carries a marker file `.probekit-run`, written before
anything else; `--overwrite` deletes only directories that carry it (or that hold nothing but the
files of a run made before the marker existed), never the current or home directory or a parent of
either. `.probekit-lock` is locked (`fcntl.flock`) for the run's whole life and holds the PID of its
holder, so a second run on a live directory is refused; the kernel releases the lock however the
process ends, kill -9 included.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

MARKER = ".probekit-run"
LOCK = ".probekit-lock"
#: Names a run directory holds (used to recognise run directories made before the marker).
RUN_FILES = frozenset({"spec.yaml", "metrics.json", "checkpoints", "figures", "report.md", "report.html",
                       "report.json", "log.txt", "results.csv", "seeds", "shards", MARKER, LOCK})

# (root as given, made absolute; root resolved; strict): strict roots refuse symbolic links below them
# (the run directory); the others only require the resolved path to stay inside (a cache folder may
# legitimately be a link to another disk)
_roots: list[tuple[Path, Path, bool]] = []


class UnsafeWriteError(OSError):
    """A write that would leave the run directory or follow a symbolic link inside it."""


def confine(run_dir: str | os.PathLike[str] | None, *others: str | os.PathLike[str]) -> None:
    """Confine writes to ``run_dir`` (no symbolic links below it) and ``others`` (None: no confinement)."""
    _roots.clear()
    if run_dir is None:
        return
    _roots.append((_absolute(Path(run_dir)), Path(run_dir).resolve(), True))
    _roots.extend((_absolute(Path(o)), Path(o).resolve(), False) for o in others)


def confined_roots() -> list[Path]:
    """The folders writes are confined to now (empty: no confinement)."""
    return [resolved for _, resolved, _ in _roots]


def _absolute(path: Path) -> Path:
    return Path(os.path.normpath(Path.cwd() / path))


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_write(path: str | os.PathLike[str]) -> Path:
    """Refuse a write to ``path`` that leaves the confined folders or goes through a link; return it.

    Outside a run (no confinement) every path is allowed.
    """
    path = Path(path)
    if not _roots:
        return path
    absolute = _absolute(path)
    resolved = Path(os.path.realpath(absolute.parent)) / absolute.name
    for given, real, strict in _roots:
        if not strict:
            continue
        for base in (given, real):
            if _inside(absolute, base):
                here = real
                for part in absolute.relative_to(base).parts:
                    here = here / part
                    if here.is_symlink():
                        raise UnsafeWriteError(errno.ELOOP, f"refusing to write through the symbolic link "
                                                            f"{here} inside the run directory", str(path))
                return path
    if any(_inside(resolved, real) for _, real, _ in _roots):
        return path
    raise UnsafeWriteError(errno.EPERM, f"refusing to write {path}: it is outside the run directory "
                                        f"{_roots[0][1]} and the cache", str(path))


def open_append(path: str | os.PathLike[str]) -> Any:
    """Open a text file for appending, refusing symbolic links (O_NOFOLLOW) and confined paths."""
    path = check_write(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    return os.fdopen(fd, "a")


# -- run-directory ownership ------------------------------------------------------------------
def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a probekit run directory: it has the marker, or it holds only the files of
    a run made before the marker existed (its spec.yaml written by probekit)."""
    if (path / MARKER).is_file() and not (path / MARKER).is_symlink():
        return True
    spec = path / "spec.yaml"
    try:
        head = spec.read_text(errors="replace")[:64] if spec.is_file() and not spec.is_symlink() else ""
        names = {p.name for p in path.iterdir()}
    except OSError:
        return False
    return head.startswith("# resolved spec written by probekit") and names <= RUN_FILES


def protected(path: Path) -> str | None:
    """Why ``path`` may never be deleted as a whole (the current or home directory, a parent of one,
    or the file system's root), or None."""
    target = path.resolve()
    for name, other in (("the current directory", Path.cwd().resolve()), ("your home directory",
                                                                           Path.home().resolve())):
        if target == other:
            return f"it is {name}"
        if target in other.parents:
            return f"it contains {name}"
    if target == Path(target.anchor):
        return "it is the file system's root"
    return None


def write_marker(run_dir: Path) -> None:
    """Write the marker that makes ``run_dir`` a probekit run directory (atomically)."""
    from probekit._version import __version__

    tmp = run_dir / f".{MARKER}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "w") as f:
        json.dump({"probekit": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
        f.write("\n")
    os.replace(tmp, run_dir / MARKER)


def clear_run_dir(run_dir: Path) -> None:
    """Delete what a run directory holds, except its lock; links are removed, never followed."""
    import shutil

    for entry in run_dir.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed process left in ``run_dir`` (its lock is held by now)."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "figures"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file() \
                    and not entry.is_symlink():
                entry.unlink()
                removed.append(entry)
    return removed


class RunLock:
    """An exclusive lock on a run directory for the run's life (``fcntl.flock`` on `.probekit-lock`)."""

    def __init__(self, run_dir: Path, name: str = LOCK):
        self.path = run_dir / name
        self._fd: int | None = None

    def acquire(self) -> int | None:
        """Take the lock; return None, or the PID of the process that holds it."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            return int(holder) if holder.isdigit() else -1
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (the file stays; it is free for the next run)."""
        if self._fd is not None:
            import fcntl

            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass
