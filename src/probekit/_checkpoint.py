"""Atomic, confined file writes and checksummed, safe checkpoint loading.

Every write goes through `atomic_open`, which refuses paths outside the run directory (and the
cache) and symbolic links inside it (see `probekit._files`). Checkpoints written by `save` end
with a line `PROBEKIT-SHA256:<hex>` over the bytes before it (torch.load ignores trailing bytes);
`load` checks it, so a damaged checkpoint is detected instead of loaded. JSON checkpoints
(`write_checked_json`) carry a `"checksum"` key and safetensors files (`save_safetensors`) a
`probekit-sha256` metadata entry, checked by `read_checked_json` and `load_safetensors`; both stay
ordinary files that any JSON or safetensors reader opens.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from probekit._errors import RunError

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
    from probekit._files import check_write

    path = check_write(path)
    if _read_only_roots:
        resolved = path.resolve()
        if _under(resolved, _read_only_roots) and not _under(resolved, _writable_roots):
            yield io.BytesIO() if "b" in mode else io.StringIO()
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
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


def _create_temporary(path: Path) -> tuple[int, str]:
    """Create a new, empty `.NAME.<random>.tmp` beside `path`; return its descriptor and path.

    Unlike `tempfile.mkstemp` (always 0600), the file gets mode 0666 less the process umask, as
    any other program's files do (0644 under the usual umask 022), so colleagues can read a
    shared run directory.
    """
    import secrets

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
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


_TRAILER = b"\nPROBEKIT-SHA256:"
_TRAILER_LEN = len(_TRAILER) + 64 + 1


def with_checksum(payload: bytes) -> bytes:
    """``payload`` followed by the checksum line that `verified` checks."""
    return payload + _TRAILER + hashlib.sha256(payload).hexdigest().encode() + b"\n"


def verified(data: bytes, name: str) -> bytes:
    """The payload of ``data`` written by `with_checksum`, checked (data without a checksum line is
    returned as it is: files written before checksums existed). A mismatch raises
    `CorruptCheckpointError` naming ``name``."""
    tail = data[-_TRAILER_LEN:]
    if len(data) < _TRAILER_LEN or not tail.startswith(_TRAILER):
        return data
    payload = data[:-_TRAILER_LEN]
    if hashlib.sha256(payload).hexdigest().encode() != tail[len(_TRAILER):-1]:
        raise CorruptCheckpointError(f"checkpoint {name} does not match its checksum (the file is damaged)")
    return payload


def save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically, with a checksum. Keep ``obj`` to tensors, numbers, strings, lists and dicts."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_open(path, "wb") as f:
        f.write(with_checksum(buf.getvalue()))


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint written by `save`: checksum checked, then ``weights_only=True`` (no code runs).

    A damaged or unreadable file raises `CorruptCheckpointError`.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read ({exc}); delete it to recompute") from exc
    payload = verified(data, str(path))
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read ({exc}); delete it to recompute") from exc


class CorruptCheckpointError(RunError):
    """A checkpoint file exists but is damaged or cannot be read (a `RunError`: exit 1 naming the file
    when the code that reads it does not recompute it)."""


# -- checked JSON -------------------------------------------------------------------------------------
_JSON_CHECKSUM = "checksum"


def _json_digest(body: Any) -> str:
    """SHA-256 of the canonical form of `body` (sorted keys, no spaces) as JSON reads it back: key
    types, tuples and tensors are normalised first, so that writer and reader agree."""
    canonical = json.loads(json.dumps(body, default=_json_default))
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_checked_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write the mapping `data` as JSON with a `"checksum"` key (the SHA-256 of the rest), atomically.

    The file stays ordinary, readable JSON; `read_checked_json` checks it. `data` must not have a
    `"checksum"` key of its own.
    """
    if _JSON_CHECKSUM in data:
        raise ValueError(f"write_checked_json: the data has a '{_JSON_CHECKSUM}' key of its own")
    write_json(path, {**data, _JSON_CHECKSUM: _json_digest(dict(data))})


def read_checked_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by `write_checked_json`; return its mapping without the checksum.

    A file that cannot be read or parsed, holds no checksum (it was written by something else, or
    the damage hit the key) or does not match it raises `CorruptCheckpointError` naming the file;
    a missing file raises `FileNotFoundError`.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                                     "delete it to recompute") from None
    if not isinstance(data, dict) or not isinstance(data.get(_JSON_CHECKSUM), str):
        raise CorruptCheckpointError(f"checkpoint {path} has no checksum (the file is damaged or was not "
                                     "written by write_checked_json)")
    expected = data.pop(_JSON_CHECKSUM)
    if _json_digest(data) != expected:
        raise CorruptCheckpointError(f"checkpoint {path} does not match its checksum (the file is damaged)")
    return data


# -- checked safetensors ------------------------------------------------------------------------------
_SAFETENSORS_CHECKSUM = "probekit-sha256"


def _safetensors_digest(data: bytes, name: str) -> tuple[str, str | None]:
    """(SHA-256 of the file's header, less the checksum entry, in canonical form plus its tensor
    bytes; the checksum stored in its metadata or None). An unparsable file raises
    `CorruptCheckpointError`."""
    try:
        if len(data) < 8:
            raise ValueError("shorter than its header length")
        n = int.from_bytes(data[:8], "little")
        if n > len(data) - 8:
            raise ValueError("header longer than the file")
        header = json.loads(data[8:8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        meta = header.get("__metadata__")
        stored = meta.pop(_SAFETENSORS_CHECKSUM, None) if isinstance(meta, dict) else None
    except ValueError as exc:
        raise CorruptCheckpointError(f"checkpoint {name} cannot be read ({exc}); delete it to recompute") from None
    h = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    h.update(memoryview(data)[8 + n:])
    return h.hexdigest(), stored if isinstance(stored, str) else None


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], *,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Save `tensors` as a safetensors file, atomically, with a checksum in its metadata.

    The file is an ordinary safetensors file (any safetensors reader loads it); its metadata holds
    `probekit-sha256`, the SHA-256 of its header and tensor bytes, which `load_safetensors` checks.
    Tensors are moved to the CPU and made contiguous.
    """
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {**(metadata or {}), _SAFETENSORS_CHECKSUM: "0" * 64}
    digest, _ = _safetensors_digest(save(state, metadata=meta), str(path))
    data = save(state, metadata={**meta, _SAFETENSORS_CHECKSUM: digest})
    with atomic_open(path, "wb") as f:
        f.write(data)


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a file written by `save_safetensors`, checksum checked (tensors on the CPU).

    A damaged file, or one without the checksum, raises `CorruptCheckpointError` naming the file;
    a missing file raises `FileNotFoundError`.
    """
    from safetensors.torch import load

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read ({exc}); delete it to recompute") from exc
    digest, stored = _safetensors_digest(data, str(path))
    if stored is None:
        raise CorruptCheckpointError(f"checkpoint {path} has no checksum (the file is damaged or was not "
                                     "written by save_safetensors)")
    if digest != stored:
        raise CorruptCheckpointError(f"checkpoint {path} does not match its checksum (the file is damaged)")
    try:
        return load(data)
    except Exception as exc:  # SafetensorError: consistent checksum, but not a file safetensors reads
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read ({exc}); delete it to recompute") from None


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

        try:
            state = load_file(str(path))
        except Exception as exc:  # a damaged or truncated file: SafetensorError, OSError, ...
            raise SpecError(f"cannot read weights {path} ({type(exc).__name__}: {exc})", path=spec_path,
                            fix="The file is damaged or not a safetensors file; save or download it again.") from None
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
