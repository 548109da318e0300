"""Provenance of a run: when, where and with what it ran (metrics.json and the report record it)."""

from __future__ import annotations

import datetime
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any


def git_commit(folder: str | Path | None = None) -> dict[str, Any] | None:
    """The git commit of `folder` (default: the current directory) and whether its tracked files
    changed since, or None when it is not inside a git work tree (or git is not installed)."""
    cwd = Path(folder) if folder is not None else Path.cwd()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None,
            "folder": str(cwd.resolve())}


def versions() -> dict[str, str]:
    """probekit's, torch's, Python's and every loaded external plugin's version."""
    import torch

    from probekit._plugins import get_plugin_manager
    from probekit._version import __version__

    out = {"probekit": __version__, "torch": str(torch.__version__), "python": platform.python_version()}
    for info in get_plugin_manager().plugin_infos():
        if not info.builtin and info.version:
            out[info.name] = info.version
    return out


def provenance(run: Any) -> dict[str, Any]:
    """What metrics.json and the report record of a run: date (UTC, ISO 8601), host name, versions,
    device, seeds and the git commit of the current directory (None outside a git work tree)."""
    import torch

    spec = run.spec
    device = str(run.device)
    if run.device.type == "cuda" and torch.cuda.is_available():
        device += f" ({torch.cuda.get_device_name(run.device)})"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "versions": versions(),
        "device": device,
        "seeds": list(spec.seeds) if spec.seeds is not None else [run.seed],
        "git": git_commit(),
    }


__all__ = ["git_commit", "provenance", "versions"]
