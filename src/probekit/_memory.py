"""Memory: what is available (the machine, its cgroup), and what a training step keeps for its backward pass.

The CPU side of `batch_size: auto` (see `probekit._batchsize`): the bytes of the tensors autograd
saves are measured at two batch sizes and fitted by a line, and compared with the memory available.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from probekit._errors import RunError

GiB = 1024**3


# -- measuring saved tensors (the CPU estimate) -------------------------------------------------
class _SavedTensorMeter:
    """Counts the bytes of distinct storages autograd keeps for backward, and their peak.

    Each saved tensor is wrapped in a holder whose deletion (when autograd frees the graph)
    releases its storage's bytes, so that several steps in one trial count by their peak,
    not their sum.
    """

    def __init__(self, exclude: set[int]):
        self.exclude = exclude
        self.live = 0
        self.peak = 0
        self.storages: dict[int, list[int]] = {}  # data_ptr -> [holders, bytes]

    def pack(self, tensor: torch.Tensor) -> Any:
        try:
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
        except Exception:  # tensors without a plain storage (sparse, nested): count their elements
            key, nbytes = id(tensor), tensor.nelement() * tensor.element_size()
        if key in self.exclude:
            return tensor
        entry = self.storages.get(key)
        if entry is None:
            self.storages[key] = [1, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        else:
            entry[0] += 1
        return _Held(self, key, tensor)

    @staticmethod
    def unpack(packed: Any) -> torch.Tensor:
        return packed.tensor if isinstance(packed, _Held) else packed

    def release(self, key: int) -> None:
        entry = self.storages.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.storages[key]


class _Held:
    __slots__ = ("meter", "key", "tensor")

    def __init__(self, meter: _SavedTensorMeter, key: int, tensor: torch.Tensor):
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self) -> None:
        self.meter.release(self.key)


def saved_tensor_bytes(trial: Callable[[int], None], batch: int,
                       exclude: Iterable[torch.Tensor] = ()) -> int:
    """Peak bytes of the tensors autograd saves for backward while `trial(batch)` runs.

    Distinct storages are counted once (views share their base's storage); the storages of
    `exclude` (the parameters, already in memory) are not counted.
    """
    meter = _SavedTensorMeter({t.untyped_storage().data_ptr() for t in exclude})
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        trial(batch)
    return meter.peak


@dataclass(frozen=True)
class MemoryLine:
    """Activation memory as a line in the batch size: `bytes = per_example * b + constant`."""

    per_example: float
    constant: float

    def __call__(self, batch: int) -> float:
        return self.per_example * batch + self.constant


def fit_memory_line(trial: Callable[[int], None], sizes: tuple[int, int],
                    exclude: Iterable[torch.Tensor] = ()) -> MemoryLine:
    """Measure `saved_tensor_bytes` at two batch sizes and fit `bytes = a * b + c` through them."""
    b1, b2 = sizes
    if not 1 <= b1 < b2:
        raise ValueError(f"need two batch sizes 1 <= b1 < b2, got {sizes}")
    exclude = list(exclude)
    m1, m2 = saved_tensor_bytes(trial, b1, exclude), saved_tensor_bytes(trial, b2, exclude)
    a = max(0.0, (m2 - m1) / (b2 - b1))
    return MemoryLine(a, max(0.0, m2 - a * b2))


def available_memory() -> int:
    """Bytes of host memory available now (MemAvailable, or the cgroup's limit if lower; else psutil)."""
    found: int | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if found is None:
        try:
            import psutil

            found = int(psutil.virtual_memory().available)
        except ImportError:
            raise RunError("batch_size auto: cannot read the available memory here (no /proc/meminfo, "
                           "psutil not installed); give batch_size as a number, or pip install psutil") from None
    try:  # a container's memory limit (cgroup v2)
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                used = int(f.read().strip())
            found = min(found, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return found


# -- the search ---------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 1024**2)):
        if n >= size / 10:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1024:.3g} KiB"
