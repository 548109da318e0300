"""Data-parallel training with torch.distributed (gloo on CPU, NCCL on GPUs).

Start with ``torchrun --nproc_per_node=N -m probekit run spec.yaml`` or
``probekit run spec.yaml --nproc N``. Every rank builds the same model and data;
the :class:`~probekit.training.Trainer` splits each global batch across ranks,
each rank back-propagates its share of the batch-mean loss, and gradients are
summed across ranks with ``all_reduce`` before the optimizer step — the gradient
averaging of DistributedDataParallel, done on the probe's own modules so that a
probe's step function needs no wrapping. Results therefore match a single process
with the same global batch, up to floating-point summation order. Only rank 0
writes the run directory and the caches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if is_initialized() else 0


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


def barrier() -> None:
    if is_initialized():
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


def all_reduce_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum gradients across ranks (parameters without a gradient contribute zeros)."""
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    if not params:
        return
    # Which parameters got a gradient on any rank: the others keep grad None, as in one process
    # (optimizers skip them; a zero gradient would still move Adam's moments).
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(has)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p, used in zip(params, has.tolist()):
        n = p.grad.numel()
        if used:
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        else:
            p.grad = None
        offset += n


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value)
    return value
