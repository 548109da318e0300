"""Atomic file writes and safe checkpoint loading."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

_read_only_roots: list[Path] = []
_writable_roots: list[Path] = []


def set_read_only(root: str | os.PathLike[str] | None) -> None:
    """Drop writes under `root` (the run directory, on distributed ranks other than 0); None clears."""
    _read_only_roots.clear()
    if root is not None:
        _read_only_roots.append(Path(root).resolve())


def _under(path: Path, roots: list[Path]) -> bool:
    return any(root == path or root in path.parents for root in roots)


@contextmanager
def writable(root: str | os.PathLike[str] | None) -> Iterator[None]:
    """Allow writes under `root` meanwhile, even inside a read-only root (None: no change)."""
    if root is None:
        yield
        return
    _writable_roots.append(Path(root).resolve())
    try:
        yield
    finally:
        _writable_roots.pop()


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A reader never sees a half-written file, and a crash leaves the old file.
    """
    path = Path(path)
    if _read_only_roots:
        resolved = path.resolve()
        if _under(resolved, _read_only_roots) and not _under(resolved, _writable_roots):
            import io

            yield io.BytesIO() if "b" in mode else io.StringIO()
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as indented, key-sorted JSON, atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save(obj: Any, path: str | os.PathLike[str]) -> None:
    """`torch.save` atomically. Keep `obj` to tensors, numbers, strings, lists and dicts."""
    try:
        with atomic_open(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as exc:  # torch wraps a failed write (disk full) in a RuntimeError
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from exc
        raise


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint written by `save` with `weights_only=True` (no code runs)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read ({exc}); delete it to recompute") from exc


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read."""


def load_state_dict(path: str | os.PathLike[str], *, spec_path: str = "model.weights") -> dict[str, torch.Tensor]:
    """Read model weights safely: safetensors, or `torch.load(weights_only=True)` (no code runs).

    Unwraps the usual containers (`{"state_dict": ...}`, `{"model": ...}`, `{"state_dict_ema": ...}`)
    and a DistributedDataParallel `module.` prefix. Unreadable files raise a SpecError naming
    `spec_path`.
    """
    from probekit._errors import SpecError

    path = Path(path)
    state: Any
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors of all kinds
            raise SpecError(f"cannot read weights {path} safely ({type(exc).__name__}: {exc})", path=spec_path,
                            fix="Save a plain state dict (torch.save(model.state_dict(), f) or safetensors).") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise SpecError(f"weights {path} hold a {type(state).__name__}, not a state dict", path=spec_path,
                        fix="Save model.state_dict().")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
