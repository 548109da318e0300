"""Feature cache: hidden states of a frozen model, stored once per input on disk.

Each cached layer lives in its own folder, named by a key (a hash of model,
weights, preprocessing, data and layer), as raw shards read through memory maps.
Reads copy the requested rows out and drop the mapped pages again, so memory
stays flat however large the cache grows. A layer is written into a temporary
folder and renamed into place when complete, under a file lock, so runs that
share a cache never see half-written data; each shard's SHA-256 is kept in the
manifest and checked on first open (a damaged entry is rebuilt). In a distributed
run the ranks compute an entry together: each writes the shards of its own rows,
and rank 0 joins their manifests and renames the entry into place.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from probekit._checkpoint import write_json

SHARD_BYTES = 64 * 2**20
_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64}


def cache_key(**parts: Any) -> str:
    """A stable hash of JSON-able key parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def per_node() -> bool:
    """Whether each machine of a multi-node run has its own cache (`PROBEKIT_CACHE_PER_NODE=1`, e.g. node-local
    scratch): each process then computes a missing entry whole, alone, instead of its share of the rows
    (the processes of one machine wait on the entry's file lock, and only one of them computes it)."""
    return os.environ.get("PROBEKIT_CACHE_PER_NODE", "").strip().lower() in ("1", "true", "yes")


def default_cache_dir() -> Path:
    """`$PROBEKIT_CACHE` or `~/.cache/probekit`."""
    env = os.environ.get("PROBEKIT_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "probekit"


class CachedArray:
    """One cached layer: `len()` rows of a fixed shape, read by index through memory maps."""

    def __init__(self, folder: Path, *, verify: bool = True):
        self.folder = Path(folder)
        manifest = read_manifest(self.folder / "manifest.json")
        self.shape: tuple[int, ...] = tuple(manifest["shape"])
        self.dtype = np.dtype(_DTYPES[manifest["dtype"]])
        self.rows_per_shard: int = manifest["rows_per_shard"]
        self.length: int = manifest["length"]
        self._shards: list[dict[str, Any]] = manifest["shards"]
        # first row of every shard (shards written by several ranks differ in size)
        self._starts = np.cumsum([0] + [s["rows"] for s in self._shards])
        self._row_bytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._maps: dict[int, tuple[Any, mmap.mmap | None]] = {}  # shard -> (file, map; None: no rows)
        if verify:
            self.verify()

    def verify(self) -> None:
        """Check every shard's size and SHA-256 against the manifest."""
        for shard in self._shards:
            path = self.folder / shard["file"]
            if not path.exists() or path.stat().st_size != shard["rows"] * self._row_bytes:
                raise CorruptCacheError(f"cache shard {path} is missing or truncated")
            if _sha256(path) != shard["sha256"]:
                raise CorruptCacheError(f"cache shard {path} does not match its checksum")

    def __len__(self) -> int:
        return self.length

    def _map(self, shard: int) -> mmap.mmap:
        if shard not in self._maps:
            f = open(self.folder / self._shards[shard]["file"], "rb")  # noqa: SIM115 - kept open with the map
            size = self._shards[shard]["rows"] * self._row_bytes
            mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else None
            self._maps[shard] = (f, mm)
        mm = self._maps[shard][1]
        if mm is None:  # rows() never picks a shard without rows
            raise IndexError(f"cache shard {shard} has no rows")
        return mm

    def rows(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """Rows at `indices` as a new array of shape `(len(indices), *shape)`."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.length):
            raise IndexError(f"index out of range for a cache of {self.length} rows")
        out = np.empty((idx.size, *self.shape), dtype=self.dtype)
        flat = out.reshape(idx.size, -1).view(np.uint8)
        shards = np.searchsorted(self._starts, idx, side="right") - 1
        rb = self._row_bytes
        for shard in np.unique(shards):
            mm = self._map(int(shard))
            where = np.nonzero(shards == shard)[0]
            local = idx[where] - self._starts[shard]
            table = np.frombuffer(mm, dtype=np.uint8).reshape(-1, rb)
            flat[where] = table[local]  # one gather per shard
            del table
            # Drop the pages we touched from this process's resident set: the OS page cache
            # still holds them, but RSS stays flat however large the cache is.
            mm.madvise(mmap.MADV_DONTNEED)
        return out

    def __getitem__(self, index: int) -> np.ndarray:
        return self.rows([index])[0]

    def close(self) -> None:
        for f, mm in self._maps.values():
            if mm is not None:
                mm.close()
            f.close()
        self._maps.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


class CorruptCacheError(RuntimeError):
    """A cache entry is damaged (it is deleted and rebuilt by `FeatureCache.get`)."""


def _manifest_checksum(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Write a manifest with the SHA-256 of its own content (key `checksum`), atomically."""
    write_json(path, {**manifest, "checksum": _manifest_checksum(manifest)})


def read_manifest(path: Path) -> dict[str, Any]:
    """A manifest written by `write_manifest`; a damaged one, or one without a checksum, raises
    `CorruptCacheError`."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptCacheError(f"cache manifest {path} cannot be read ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("checksum") != _manifest_checksum(manifest):
        raise CorruptCacheError(f"cache manifest {path} does not match its checksum")
    return manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Writer:
    """Appends batches of rows to shards in a temporary folder."""

    def __init__(self, folder: Path, dtype: str, prefix: str = ""):
        self.folder = folder
        self.prefix = prefix
        self.dtype_name = dtype
        self.dtype = np.dtype(_DTYPES[dtype])
        self.shape: tuple[int, ...] | None = None
        self.rows_per_shard = 0
        self.shards: list[dict[str, Any]] = []
        self._file: Any = None
        self._rows_in_shard = 0
        self._hash: Any = None
        self.length = 0

    def _open_shard(self) -> None:
        name = f"{self.prefix}shard-{len(self.shards):05d}.bin"
        self._file = open(self.folder / name, "wb")  # noqa: SIM115
        self._hash = hashlib.sha256()
        self.shards.append({"file": name, "rows": 0, "sha256": ""})
        self._rows_in_shard = 0

    def _close_shard(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self.shards[-1]["rows"] = self._rows_in_shard
            self.shards[-1]["sha256"] = self._hash.hexdigest()
            self._file = None

    def append(self, batch: np.ndarray) -> None:
        batch = np.ascontiguousarray(batch, dtype=self.dtype)
        if self.shape is None:
            self.shape = tuple(batch.shape[1:])
            row_bytes = max(1, int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize)
            self.rows_per_shard = max(1, SHARD_BYTES // row_bytes)
        elif tuple(batch.shape[1:]) != self.shape:
            raise ValueError(f"cache rows changed shape: {self.shape} then {tuple(batch.shape[1:])}")
        start = 0
        while start < len(batch):
            if self._file is None or self._rows_in_shard >= self.rows_per_shard:
                self._close_shard()
                self._open_shard()
            take = min(len(batch) - start, self.rows_per_shard - self._rows_in_shard)
            data = batch[start:start + take].tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._rows_in_shard += take
            self.length += take
            start += take

    def finish(self, extra: Mapping[str, Any], name: str = "manifest.json") -> None:
        self._close_shard()
        write_manifest(self.folder / name, {
            "shape": list(self.shape or ()), "dtype": self.dtype_name, "rows_per_shard": self.rows_per_shard,
            "length": self.length, "shards": self.shards, **extra})


class FeatureCache:
    """A folder of cached layers, shared safely by concurrent runs."""

    def __init__(self, root: str | Path | None = None, *, log: Callable[[str], None] | None = None):
        """A cache in `root` (default: the `features` folder of `default_cache_dir()`); `log` receives
        a line for every damaged entry that is rebuilt (default: the `probekit` logger)."""
        import logging

        self.root = Path(root) if root is not None else default_cache_dir() / "features"
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log or logging.getLogger("probekit").warning

    def path(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return (self.path(key) / "manifest.json").exists()

    def open(self, key: str, *, verify: bool = True) -> CachedArray:
        """The entry `key`; `verify=False` skips hashing its shards again (for an entry this process
        has just written and hashed)."""
        return CachedArray(self.path(key), verify=verify)

    def get(self, keys: Mapping[str, str], compute: Callable[..., Iterator[Mapping[str, Any]]],
            *, dtype: str = "float32", info: Mapping[str, Any] | None = None,
            length: int | None = None) -> dict[str, CachedArray]:
        """Cached arrays for `keys` (name -> cache key), computing the missing ones in one pass.

        `compute(names)` yields batches as `{name: array or tensor}` for the
        requested names, in dataset order. Given the number of rows `length`, a
        distributed run computes the entries on all ranks together: every rank
        calls `compute(names, rows)` for its own `range` of rows and writes
        those shards (all ranks must call `get`); with `per_node()` caches, each
        rank reads or computes whole entries of its own machine's cache.
        """
        from probekit import _distributed as distributed

        if length is not None and distributed.world_size() > 1 and not per_node():
            return self._get_together(keys, compute, dtype, info or {}, length)
        result: dict[str, CachedArray] = {}
        missing = []
        for name, key in keys.items():
            if (array := self._open_or_drop(key)) is not None:
                result[name] = array
            else:
                missing.append(name)
        if not missing:
            return result
        locks = [FileLock(str(self.root / f"{keys[n]}.lock")) for n in sorted(missing, key=lambda n: keys[n])]
        for lock in locks:
            lock.acquire()
        try:
            self._remove_stale([keys[n] for n in missing])
            still = [n for n in missing if not self.has(keys[n])]
            written = self._write({n: keys[n] for n in still}, compute, dtype, info or {}) if still else set()
            for n in missing:
                # An entry this process has just written was hashed as it was written: reading it
                # back to hash it again would only cost time.
                result[n] = self.open(keys[n], verify=n not in written)
        finally:
            for lock in reversed(locks):
                lock.release()
        return result

    def _remove_stale(self, keys: Sequence[str]) -> None:
        """Delete the temporary folders of `keys` left by killed processes (their locks are held by
        this process now, so no live writer owns them)."""
        for key in keys:
            for tmp in [*self.root.glob(f".{key}.*.tmp"), *self.root.glob(f".{key}.*.parts")]:
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp, ignore_errors=True)

    def _open_or_drop(self, key: str) -> CachedArray | None:
        """The entry, or None when it is missing or damaged (a damaged one is deleted)."""
        try:
            if self.has(key):
                return self.open(key)
        except (CorruptCacheError, json.JSONDecodeError, KeyError, OSError) as exc:
            self.log(f"feature cache: entry {self.path(key)} is damaged ({exc}); computing it again")
            shutil.rmtree(self.path(key), ignore_errors=True)
        return None

    def _get_together(self, keys: Mapping[str, str], compute: Callable[..., Iterator[Mapping[str, Any]]],
                      dtype: str, info: Mapping[str, Any], length: int) -> dict[str, CachedArray]:
        """`get` on all ranks of a process group, each computing and writing its share of rows."""
        from probekit import _distributed as distributed

        rank, world = distributed.rank(), distributed.world_size()
        locks: list[FileLock] = []
        plan: tuple[list[str], str] = ([], "")
        result: dict[str, CachedArray] = {}
        if rank == 0:  # rank 0 decides, and holds the locks against other runs sharing the cache
            for n, k in keys.items():
                if (array := self._open_or_drop(k)) is not None:
                    result[n] = array
            missing = [n for n in keys if n not in result]
            locks = [FileLock(str(self.root / f"{keys[n]}.lock")) for n in sorted(missing, key=lambda n: keys[n])]
            for lock in locks:
                lock.acquire()
            self._remove_stale([keys[n] for n in missing])
            still = [n for n in missing if not self.has(keys[n])]
            plan = (still, f".{keys[still[0]]}.{uuid.uuid4().hex[:12]}.parts" if still else "")
        try:
            still, tmp_name = distributed.broadcast(plan)
            if still:
                tmp = self.root / tmp_name
                start, stop = (length * rank) // world, (length * (rank + 1)) // world
                error = self._write_part(tmp, still, compute, range(start, stop), rank, dtype)
                errors = [e for e in distributed.all_gather(error) if e]
                if errors:
                    if rank == 0:
                        shutil.rmtree(tmp, ignore_errors=True)
                    kind, message = errors[0]
                    if all(k == "StopRequested" for k, _ in errors):  # a stop stays a stop (exit 143)
                        from probekit._training import StopRequested

                        raise StopRequested(message)
                    raise RuntimeError(f"computing the feature cache failed on a rank: {kind}: {message}")
                if rank == 0:
                    try:
                        for n in still:
                            self._join_parts(tmp / n, world, {"key": keys[n], "layer": n, **info}, self.path(keys[n]))
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
            distributed.barrier()
        finally:
            for lock in reversed(locks):
                lock.release()
        return {n: result[n] if n in result else self.open(k) for n, k in keys.items()}

    def _write_part(self, tmp: Path, names: Sequence[str], compute: Callable[..., Iterator[Mapping[str, Any]]],
                    rows: range, rank: int, dtype: str) -> tuple[str, str] | None:
        """Write this rank's rows of every entry as shards `r<rank>-shard-*.bin`; None, or an error's
        type name and message."""
        try:
            writers = {}
            for n in names:
                (tmp / n).mkdir(parents=True, exist_ok=True)
                writers[n] = _Writer(tmp / n, "int64" if n == "labels" else dtype, prefix=f"r{rank:04d}-")
            if len(rows):
                for batch in compute(list(names), rows):
                    _append(writers, batch)
            for n, w in writers.items():
                if w.length != len(rows):
                    raise RuntimeError(f"compute gave {w.length} rows of '{n}' for the {len(rows)} rows asked")
                w.finish({}, name=f"part-{rank:04d}.json")
            return None
        except Exception as exc:  # reported to every rank, so that none waits forever
            return type(exc).__name__, str(exc)

    def _join_parts(self, folder: Path, parts: int, extra: Mapping[str, Any], final: Path) -> None:
        """One manifest over the parts' shards, in rank order; then the entry is renamed into place."""
        manifests = [read_manifest(folder / f"part-{r:04d}.json") for r in range(parts)]
        written = [m for m in manifests if m["length"]]
        shapes = {tuple(m["shape"]) for m in written}
        if len(shapes) > 1:
            raise ValueError(f"ranks computed rows of different shapes for one cache entry: {sorted(shapes)}")
        first = written[0] if written else manifests[0]
        write_manifest(folder / "manifest.json", {
            "shape": first["shape"], "dtype": first["dtype"], "rows_per_shard": first["rows_per_shard"],
            "length": sum(m["length"] for m in manifests), "shards": [s for m in written for s in m["shards"]],
            **extra})
        if _complete(final):  # written by another process meanwhile
            return
        _remove(final)
        os.replace(folder, final)

    def _write(self, keys: Mapping[str, str], compute: Callable[[Sequence[str]], Iterator[Mapping[str, Any]]],
               dtype: str, info: Mapping[str, Any]) -> set[str]:
        """Compute and write the entries of `keys`; returns the names whose entry is the one written here."""
        tmp = {n: self.root / f".{k}.{uuid.uuid4().hex[:8]}.tmp" for n, k in keys.items()}
        writers: dict[str, _Writer] = {}
        written = set()
        try:
            for n, folder in tmp.items():
                folder.mkdir(parents=True)
                writers[n] = _Writer(folder, "int64" if n == "labels" else dtype)
            for batch in compute(list(keys)):
                _append(writers, batch)
            for n, key in keys.items():
                writers[n].finish({"key": key, "layer": n, **info})
                final = self.path(key)
                if _complete(final):  # written by another process meanwhile
                    shutil.rmtree(tmp[n])
                else:
                    _remove(final)  # an incomplete entry, or a file where the entry belongs
                    os.replace(tmp[n], final)
                    written.add(n)
        finally:
            for folder in tmp.values():
                shutil.rmtree(folder, ignore_errors=True)
        return written


def _complete(entry: Path) -> bool:
    """Whether `entry` is a cache entry folder with its manifest."""
    return entry.is_dir() and not entry.is_symlink() and (entry / "manifest.json").is_file()


def _remove(entry: Path) -> None:
    """Remove whatever is where a cache entry belongs (an incomplete folder, a file, a link)."""
    if entry.is_symlink() or entry.is_file():
        entry.unlink()
    elif entry.is_dir():
        shutil.rmtree(entry)


def _append(writers: Mapping[str, _Writer], batch: Mapping[str, Any]) -> None:
    for n, writer in writers.items():
        value = batch[n]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        writer.append(value)


class FeatureSet:
    """Several cached layers of the same inputs, read together in batches.

    `batch(indices)` returns `{name: tensor}`; iterate an epoch with
    `batches`.
    """

    def __init__(self, arrays: Mapping[str, CachedArray]):
        self.arrays = dict(arrays)
        lengths = {len(a) for a in self.arrays.values()}
        if len(lengths) > 1:
            raise ValueError(f"cached layers differ in length: {lengths}")
        self.length = lengths.pop() if lengths else 0

    def __len__(self) -> int:
        return self.length

    def shape(self, name: str) -> tuple[int, ...]:
        return self.arrays[name].shape

    def batch(self, indices: Sequence[int] | torch.Tensor, names: Sequence[str] | None = None,
              device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # read in file order, return in the asked order
        out = {}
        for name in names or self.arrays:
            rows = self.arrays[name].rows(idx[order])
            back = np.empty_like(rows)
            back[order] = rows
            t = torch.from_numpy(back)
            if t.dtype == torch.float16:
                t = t.float()
            out[name] = t.to(device) if device is not None else t
        return out

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                names: Sequence[str] | None = None, device: torch.device | str | None = None
                ) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of batches, shuffled when `generator` is given."""
        from probekit._distributed import batches_of

        for idx in batches_of(self.length, batch_size, generator):
            yield self.batch(idx, names, device)
