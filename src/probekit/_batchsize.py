"""`batch_size: auto`: the largest training batch that fits in memory, chosen once per run.

Every training probe accepts `batch_size: auto` besides a number. The probe
hands `resolve_batch_size` a function that computes its real loss on the
first `b` training examples; with `auto` that loss is tried at several
batch sizes (forward and backward only: no optimizer step, and parameters,
gradients, buffers such as batch-norm statistics and the random state are left
as they were), and the size found is stored in the run's `checkpoints/` so
that `--resume` trains on with the same size instead of searching again (the
batch size changes the results, and the free memory may differ by then).

How the size is found depends on the device:

- **CUDA**: the step is run at 1, 2, 4, ... examples until
  `torch.cuda.OutOfMemoryError`, then bisected between the last size that fit
  and the first that did not. The answer is exact for that step on that GPU at
  that moment (memory for the optimizer state, which the first real step
  creates, is held back during the search).
- **CPU** (and other devices): there is no reliable out-of-memory error on the
  CPU (Linux overcommits memory and its OOM killer ends the process instead),
  so the size is *estimated*: the bytes of tensors that autograd saves for the
  backward pass (the activations, which grow with the batch) are measured at
  two batch sizes and fitted by a line `bytes = a * b + c`; the chosen batch
  is the largest whose predicted activations, plus gradients and optimizer
  state, fit `memory_fraction` of the memory available now (`MemAvailable`
  of `/proc/meminfo`, or a cgroup limit if lower; psutil elsewhere). Transient
  buffers of the backward pass and allocator overhead are not measured: the
  remaining `1 - memory_fraction` is the margin for them. Tensors a custom
  autograd function keeps on `ctx` without `save_for_backward` are not seen.

The result is capped at `maximum` (the training-set size, or a probe's own
limit). In a distributed run the search gives the size of one process; the
(global) batch size is that times the number of processes (processes on one
machine share its memory on the CPU), rank 0 decides and every rank uses its
answer.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from probekit._errors import RunError
from probekit._memory import MemoryLine, available_memory, fit_memory_line, format_bytes, saved_tensor_bytes

if TYPE_CHECKING:
    from probekit._context import RunContext

BatchSizeOption = int | Literal["auto"]
"""What a `batch_size` option holds: a positive number, or `"auto"`."""

def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _largest_fitting(fits: Callable[[int], bool], *, maximum: int, start: int) -> int:
    """Double from `start` until `fits` fails (or `maximum` fits), then bisect; 0 if none fits."""
    good, bad = 0, None
    b = max(1, min(start, maximum))
    while True:
        if not fits(b):
            bad = b
            break
        good = b
        if b >= maximum:
            return maximum
        b = min(2 * b, maximum)
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def find_batch_size(trial: Callable[[int], None], *, maximum: int, device: torch.device, start: int = 1,
                    memory_fraction: float = 0.8, fixed_bytes: int = 0,
                    exclude: Iterable[torch.Tensor] = (), available: int | None = None,
                    processes: int = 1, log: Callable[[str], None] | None = None) -> int:
    """The largest batch size, at most `maximum`, at which `trial` fits in memory.

    `trial(b)` runs one forward and backward step of training on `b` examples and changes
    no state that training depends on (the caller resets the gradients; no optimizer step).

    On CUDA the step is tried at `start`, doubled until `torch.cuda.OutOfMemoryError` (caught,
    then `torch.cuda.empty_cache()`), and bisected between the last size that fit and the first
    that did not; `fixed_bytes` (optimizer state the real training will add) is held back
    meanwhile. On other devices the answer is an estimate: the saved-for-backward bytes are
    measured at two sizes (`fit_memory_line`) and the largest `b` with
    `a * b + c + fixed_bytes <= memory_fraction * available / processes` is chosen
    (`available`: `available_memory` unless given; `processes`: processes sharing it;
    `exclude`: tensors already in memory, e.g. the parameters). See the module's docstring.

    `log` receives one line saying which size was chosen and why.
    """
    if maximum < 1:
        raise ValueError(f"maximum must be >= 1, got {maximum}")
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    size, why = _find(trial, maximum=maximum, device=device, start=start, memory_fraction=memory_fraction,
                      fixed_bytes=fixed_bytes, exclude=exclude, available=available, processes=processes)
    if log is not None:
        log(f"batch_size auto: {size} ({why})")
    return size


def _find(trial: Callable[[int], None], *, maximum: int, device: torch.device, start: int,
          memory_fraction: float, fixed_bytes: int, exclude: Iterable[torch.Tensor], available: int | None,
          processes: int, limit: str = "the training-set size") -> tuple[int, str]:
    """The batch size and why it was chosen (`limit` names what `maximum` is)."""
    if device.type == "cuda":
        size = _search_cuda(trial, maximum=maximum, device=device, start=start, fixed_bytes=fixed_bytes)
        if size >= maximum:
            return size, f"limited by {limit} {maximum}; it fits on {device}"
        return size, f"the largest that fits on {device}: doubling, then bisection until out of memory"
    return _estimate(trial, maximum=maximum, start=start, memory_fraction=memory_fraction,
                     fixed_bytes=fixed_bytes, exclude=exclude, available=available, processes=processes,
                     limit=limit)


def _search_cuda(trial: Callable[[int], None], *, maximum: int, device: torch.device, start: int,
                 fixed_bytes: int) -> int:
    def fits(b: int) -> bool:
        failed = False
        try:
            trial(b)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            failed = True
        if failed:  # after the except block, so that the traceback's tensors are freed first
            torch.cuda.empty_cache()
        return not failed

    reserve = torch.empty(fixed_bytes, dtype=torch.uint8, device=device) if fixed_bytes > 0 else None
    try:
        size = _largest_fitting(fits, maximum=maximum, start=start)
    finally:
        del reserve
        torch.cuda.empty_cache()
    if size < 1:
        raise RunError(f"batch_size auto: even one example does not fit in the memory of {device}")
    return size


def _estimate(trial: Callable[[int], None], *, maximum: int, start: int, memory_fraction: float,
              fixed_bytes: int, exclude: Iterable[torch.Tensor], available: int | None,
              processes: int, limit: str) -> tuple[int, str]:
    if maximum == 1:
        return 1, f"limited by {limit} 1"
    b1 = max(1, min(start, maximum - 1))
    b2 = min(maximum, max(4 * b1, 32))
    line = fit_memory_line(trial, (b1, b2), exclude)
    total = available if available is not None else available_memory()
    budget = memory_fraction * total / max(1, processes)
    room = budget - fixed_bytes - line.constant
    share = f", shared by {processes} processes" if processes > 1 else ""
    why = (f"fits {memory_fraction:.0%} of {format_bytes(total)} available{share}, at an estimated "
           f"{format_bytes(line.per_example)} of activations per example")
    if line.per_example <= 0 or room >= line.per_example * maximum:
        return maximum, (f"limited by {limit} {maximum}; estimated at "
                         f"{format_bytes(line(maximum) + fixed_bytes)}, within {memory_fraction:.0%} of "
                         f"{format_bytes(total)} available{share}")
    size = math.floor(room / line.per_example)
    if size < 1:
        return 1, (f"even one example is estimated at {format_bytes(line(1) + fixed_bytes)}, more than "
                   f"{memory_fraction:.0%} of {format_bytes(total)} available{share}; trying anyway")
    return size, why


# -- what probes call ---------------------------------------------------------------------------
Loss = Callable[[int], torch.Tensor]


def training_trial(loss: Loss | Sequence[Loss], modules: Iterable[nn.Module], device: torch.device,
                   precision: str | None = None) -> Callable[[int], None]:
    """`trial(b)`: `loss(b).backward()` as the Trainer runs it, leaving no trace.

    `loss` may be several losses (e.g. of several models that share one batch size): each is
    run and freed in turn, so the batch must fit each of them. The modules' gradients and
    buffers (batch-norm statistics) and the random number generators are restored afterwards;
    `precision` (default: the run's) selects autocast as in the Trainer.
    """
    from probekit._training import autocast, default_precision

    losses = [loss] if callable(loss) else list(loss)
    modules = list(modules)
    precision = precision or default_precision()

    def trial(b: int) -> None:
        params = [p for m in modules for p in m.parameters()]
        grads = [p.grad for p in params]
        buffers = [(buf, buf.detach().clone()) for m in modules for buf in m.buffers()]
        devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                for one in losses:
                    with autocast(precision, device.type):
                        value = one(b)
                    value.backward()
                    del value
                    for p in params:  # free this loss's gradients before the next one
                        p.grad = None
        finally:
            for p, g in zip(params, grads):
                p.grad = g
            with torch.no_grad():
                for buf, saved in buffers:
                    buf.copy_(saved)

    return trial


def _record_path(run: RunContext, tag: str) -> Any:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in tag)
    return run.checkpoint_dir / f"batch-size-{safe}-{zlib.crc32(tag.encode()):08x}.json"


def resolve_batch_size(run: RunContext, tag: str, requested: BatchSizeOption, loss: Loss | Sequence[Loss],
                       *, modules: Iterable[nn.Module], maximum: int, optimizer_slots: int = 2,
                       memory_fraction: float = 0.8) -> int:
    """A probe's batch size: `requested` if a number; for `"auto"` the size chosen for `tag`.

    `loss(b)` is the probe's real training loss on its first `b` training examples (run as
    the Trainer runs a step, see `training_trial`; several losses when several models
    share the size); `modules` are the modules it trains
    (their gradients and `optimizer_slots` optimizer tensors per parameter, 2 for Adam, count
    against the memory); `maximum` is the training-set size or the probe's own limit.

    The first time, the size is searched (`find_batch_size`) and written to
    `checkpoints/batch-size-<tag>-<crc>.json`; afterwards (`--resume`) that file is read
    instead, so a resumed run trains with the size it started with. The choice goes to the
    run log. In a distributed run rank 0 decides: the search gives one process's size, the
    (global) batch size returned is that times the number of processes, capped at `maximum`.
    """
    if requested != "auto":
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"batch size must be a positive integer or 'auto', got {requested!r}")
        return requested
    from probekit import _distributed as distributed

    world = distributed.world_size()
    size: int | None = None
    if distributed.is_main():
        path = _record_path(run, tag)
        record = _read_record(run, path, tag)
        if record is not None:
            size = int(record["batch_size"])
            run.log(f"batch_size auto ({tag}): {size}, as chosen before and kept in checkpoints/{path.name} "
                    f"({record.get('reason', '')})")
        else:
            size = _search(run, tag, loss, modules=list(modules), maximum=maximum,
                           optimizer_slots=optimizer_slots, memory_fraction=memory_fraction, world=world,
                           path=path)
    if world > 1:
        size = distributed.broadcast(size)
    assert size is not None
    return size


def _read_record(run: RunContext, path: Any, tag: str) -> dict[str, Any] | None:
    """The record of an earlier search for `tag`, or None (none yet; a damaged one is logged and the
    size searched again, which overwrites it)."""
    from probekit import _checkpoint as ckpt

    try:
        record = ckpt.read_checked_json(path)
    except FileNotFoundError:
        return None
    except ckpt.CorruptCheckpointError as exc:
        run.log(f"batch_size auto ({tag}): {exc}; searching again")
        return None
    if record.get("tag") != tag or not isinstance(record.get("batch_size"), int):
        return None
    return record


def _search(run: RunContext, tag: str, loss: Loss | Sequence[Loss], *, modules: list[nn.Module],
            maximum: int, optimizer_slots: int, memory_fraction: float, world: int, path: Any) -> int:
    from probekit import _checkpoint as ckpt

    device = run.device
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    state = sum(p.numel() * p.element_size() for p in params)
    fixed = state * (optimizer_slots + (0 if device.type == "cuda" else 1))  # + gradients on the CPU
    local_max = max(1, -(-maximum // world))
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    per_process, reason = _find(
        training_trial(loss, modules, device), maximum=local_max, device=device, start=1,
        memory_fraction=memory_fraction, fixed_bytes=fixed, available=None,
        exclude=[p for m in modules for p in m.parameters()],  # in memory already, trained or not
        processes=processes if device.type != "cuda" else 1,
        limit="the training-set size" if world == 1 else "a process's share of the training set")
    size = min(per_process * world, maximum)
    if world > 1:
        reason = f"{per_process} per process x {world} processes; per process: {reason}"
    ckpt.write_checked_json(path, {"tag": tag, "batch_size": size, "per_process": per_process, "world_size": world,
                           "device": str(device), "maximum": maximum, "reason": reason})
    run.log(f"batch_size auto ({tag}): {size} ({reason})")
    return size


__all__ = ["BatchSizeOption", "MemoryLine", "available_memory", "find_batch_size", "fit_memory_line",
           "resolve_batch_size", "saved_tensor_bytes", "training_trial"]
