"""Data-parallel training with torch.distributed (gloo on CPU, NCCL on GPUs).

Start with `torchrun --nproc_per_node=N -m probekit run spec.yaml` or
`probekit run spec.yaml --nproc N`. Every rank builds the same model and data.
The `Trainer` wraps the modules it trains in
`DistributedDataParallel` (DDP); each rank reads its own
share of every global batch (`DistributedBatchSampler`), weighs its loss by
that share, and DDP averages the gradients, so results match a single process with
the same global batch up to floating-point summation order. The ranks compute the
feature cache together, each writing the shards of its own rows
(`get`); only rank 0 writes the run directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


_alone = False  # inside alone(): this process trains as if it were the only one


def _active() -> bool:
    return is_initialized() and not _alone


def world_size() -> int:
    """Processes that train together (1 outside a process group or inside `alone`)."""
    import torch.distributed as dist

    return dist.get_world_size() if _active() else 1


def rank() -> int:
    """This process's rank among those that train together (0 inside `alone`)."""
    import torch.distributed as dist

    return dist.get_rank() if _active() else 0


def group_rank() -> int:
    """This process's rank in the process group, also inside `alone`."""
    import torch.distributed as dist

    return dist.get_rank() if is_initialized() else 0


def group_size() -> int:
    """The number of processes in the process group, also inside `alone`."""
    import torch.distributed as dist

    return dist.get_world_size() if is_initialized() else 1


def spread(items: Sequence[T]) -> list[tuple[int, T]]:
    """This process's share of independent jobs (e.g. sweep points): `(index, item)`, round robin."""
    return [(i, item) for i, item in enumerate(items) if i % group_size() == group_rank()]


@contextmanager
def alone(writable: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Train on this process alone (no DDP, no collectives), e.g. one's own sweep points.

    `writable` (a folder inside the run directory, such as its checkpoints) may be written by
    this rank meanwhile, so that its jobs checkpoint and resume like a single process's.
    """
    global _alone
    from probekit import _checkpoint as checkpoint

    before = _alone
    _alone = True
    try:
        with checkpoint.writable(writable):
            yield
    finally:
        _alone = before


_current_rank, _current_world_size = rank, world_size


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group that torchrun describes in the environment; False when not launched so."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_initialized():
        return is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not _active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (any picklable object); also across `alone`."""
    if not is_initialized():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * group_size()
    dist.all_gather_object(out, value)
    return out


class DistributedBatchSampler(torch.utils.data.Sampler):
    """This process's share of every global batch, as index lists.

    The global batches are those of one process (`randperm(n)` from the
    epoch's generator, cut into `batch_size` pieces); rank `r` of `N` gets
    the `r`-th of `N` near-equal slices of each. Unlike
    `torch.utils.data.DistributedSampler`, nothing is padded with
    duplicates or dropped, so `N` processes see exactly the examples, in the
    same batches, that one process sees: use it as
    `DataLoader(dataset, batch_sampler=...)`, and weigh each rank's loss by its
    share of the global batch (the Trainer does, with `sharded=True`).
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator | None = None, *,
                 rank: int | None = None, num_replicas: int | None = None):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.rank = _current_rank() if rank is None else rank
        self.num_replicas = _current_world_size() if num_replicas is None else num_replicas

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.tensors():
            yield batch.tolist()

    def tensors(self) -> list[torch.Tensor]:
        """The same shares as index tensors."""

        return [torch.tensor_split(batch, self.num_replicas)[self.rank]
                for batch in batches_of(self.n, self.batch_size, self.generator)]


def wrap(module: torch.nn.Module, *, find_unused_parameters: bool = False) -> torch.nn.Module:
    """`module` in DistributedDataParallel (on its own device), or as is in one process.

    With `find_unused_parameters` DDP leaves parameters that no rank used in a step with
    grad None, as one process would (it costs a walk over the autograd graph every step).
    """
    if not _active() or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters)


def unused_parameters(module: torch.nn.Module, loss: torch.Tensor) -> list[torch.nn.Parameter]:
    """The trainable parameters of `module` that the autograd graph of `loss` does not reach."""
    seen, stack, reached = set(), [loss.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)  # AccumulateGrad nodes hold the leaf
        if variable is not None:
            reached.add(id(variable))
        stack.extend(f for f, _ in fn.next_functions)
    return [p for p in module.parameters() if p.requires_grad and id(p) not in reached]


def shutdown(*, wait: bool = True) -> None:
    """Leave the process group (a no-op outside one); `wait` for the other ranks first.

    Don't wait after an error: the other ranks may never get there.
    """
    if is_initialized():
        import gc

        import torch.distributed as dist

        gc.collect()  # DDP reducers left in reference cycles go before their process group does
        if wait:
            dist.barrier()  # no rank leaves while another still talks to it
        dist.destroy_process_group()


def barrier() -> None:
    if _active():
        import torch.distributed as dist

        dist.barrier()


def split(batch: Any, part: int, parts: int) -> tuple[Any, int]:
    """This rank's share of a batch (tensors split along dim 0) and the global batch size."""
    if isinstance(batch, torch.Tensor):
        return torch.tensor_split(batch, parts)[part], len(batch)
    if isinstance(batch, dict):
        sizes = {len(v) for v in batch.values() if isinstance(v, torch.Tensor)}
        if len(sizes) != 1:
            raise TypeError("distributed training needs dict batches whose tensors share their first dimension")
        return {k: (torch.tensor_split(v, parts)[part] if isinstance(v, torch.Tensor) else v)
                for k, v in batch.items()}, sizes.pop()
    if isinstance(batch, (tuple, list)):
        sizes = {len(v) for v in batch if isinstance(v, torch.Tensor)}
        if len(sizes) != 1:
            raise TypeError("distributed training needs tuple batches whose tensors share their first dimension")
        return type(batch)(torch.tensor_split(v, parts)[part] if isinstance(v, torch.Tensor) else v
                           for v in batch), sizes.pop()
    raise TypeError(f"distributed training cannot split a batch of type {type(batch).__name__}; "
                    "yield tensors, or dicts / tuples of tensors, from the batches callback")


def local_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return len(batch)
    values = batch.values() if isinstance(batch, dict) else batch
    return next(len(v) for v in values if isinstance(v, torch.Tensor))


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value)
    return value


def rank_batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """This process's share of each global batch of `batches_of` (all of it in one process).

    Train with `Trainer.fit(..., sharded=True)` so that every process reads only its own examples.
    """
    return DistributedBatchSampler(n, batch_size, generator).tensors()


def batches_of(n: int, batch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Index batches over `range(n)`, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]
