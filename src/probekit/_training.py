"""A small, resumable training loop shared by every probe that trains something.

Each epoch's data order and randomness derive from `(seed, epoch)` alone, and
the state after every epoch (modules, optimizer, losses) is checkpointed
atomically, so a run killed at any point and resumed ends with exactly the
results of an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probekit import _checkpoint as ckpt
from probekit._errors import RunError


class StopRequested(RunError):
    """The run was asked to stop (SIGTERM); the training state was checkpointed first."""


_stop_requested = False
_default_precision = "fp32"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def set_default_precision(precision: str) -> None:
    """The precision of Trainers that are not given one (the runner sets the spec's `precision`)."""
    global _default_precision
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, not {precision!r}")
    _default_precision = precision


def default_precision() -> str:
    """The precision of Trainers that are not given one."""
    return _default_precision


def autocast(precision: str, device_type: str) -> Any:
    """The autocast context of a training `precision` (`fp32`: none) on `device_type`."""
    import contextlib

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=_DTYPES[precision])


def request_stop() -> None:
    """Ask every running `Trainer` to checkpoint after its current step and stop."""
    global _stop_requested
    _stop_requested = True


def stop_requested() -> bool:
    return _stop_requested


def clear_stop() -> None:
    global _stop_requested
    _stop_requested = False


def epoch_seed(seed: int, epoch: int, tag: str = "") -> int:
    """A reproducible seed for one epoch of one training job."""
    import zlib

    return (seed * 1_000_003 + epoch * 7919 + zlib.crc32(tag.encode())) % (2**63 - 1)


class Trainer:
    """Runs epochs of `step(batch) -> loss` with checkpoint/resume.

    Args:
        modules: the trainable modules by name (their state is checkpointed).
        optimizer: optimizer over their parameters.
        epochs: number of epochs.
        checkpoint: file for the state after each epoch (`None`: no checkpoints).
        seed: base seed; epoch `e` runs under `epoch_seed(seed, e, tag)`.
        tag: distinguishes several trainers of one run (part of the seed).
        name: how log lines call this trainer (default: `tag`); not part of the seed, so that
            trainers of several variants can share a tag and see identical batches.
        progress: optional `progress(iterable, total=, desc=)` wrapper (`Run.progress`).
        log: optional `log(message)`.
        scheduler: optional LR scheduler stepped once per epoch.
        precision: fp32, bf16 or fp16 (default: the spec's `precision`).
        name: how log lines call this trainer.
        grad_clip: clip the gradients' global L2 norm to this before every step (None: no clipping).
        validate: optional `validate() -> float`, a validation loss (lower is better) computed after every
            epoch with the modules in eval mode; the trainer keeps the weights of the best epoch as well
            as the last (`best_epoch`, `val_losses`, `restore_best()`), in its checkpoints too.
    """

    def __init__(self, modules: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer, *, epochs: int,
                 checkpoint: str | Path | None, seed: int = 0, tag: str = "",
                 progress: Callable[..., Iterable[Any]] | None = None,
                 log: Callable[[str], None] | None = None, scheduler: Any = None, precision: str | None = None,
                 name: str | None = None, grad_clip: float | None = None,
                 validate: Callable[[], float] | None = None):
        self.modules = dict(modules)
        self.optimizer = optimizer
        self.epochs = epochs
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.seed = seed
        self.tag = tag
        self.name = name or tag or "training"
        self.progress = progress
        self.log = log or (lambda message: None)
        self.scheduler = scheduler
        self.precision = precision or _default_precision
        self._scaler: Any = None
        self.grad_clip = grad_clip
        self.validate = validate
        self.epoch = 0
        self.losses: list[float] = []
        self.val_losses: list[float] = []
        self.best_epoch: int | None = None  # 1-based epoch of the lowest validation loss
        self._best_state: dict[str, Any] | None = None
        self._partial: dict[str, Any] | None = None  # mid-epoch state saved on SIGTERM
        self._resume()

    @property
    def done(self) -> bool:
        return self.epoch >= self.epochs

    def _resume(self) -> None:
        if self.checkpoint is None or not self.checkpoint.exists():
            return
        try:
            state = ckpt.load(self.checkpoint)
        except ckpt.CorruptCheckpointError as exc:
            # A damaged checkpoint is moved aside and training starts again (deterministic, so the
            # results are the same; only time is lost).
            aside = self.checkpoint.with_name(self.checkpoint.name + ".corrupt")
            try:
                self.checkpoint.replace(aside)
            except FileNotFoundError:  # another process of a distributed run moved it first
                pass
            self.log(f"{self.name}: {exc}; moved to {aside.name}, training again from the start")
            return
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.losses = [float(x) for x in state["losses"]]
        self.val_losses = [float(x) for x in state.get("val_losses", [])]
        self.best_epoch = state.get("best_epoch")
        self._best_state = state.get("best")
        self._partial = state.get("partial")
        where = f" and step {self._partial['step']}" if self._partial else ""
        self.log(f"{self.name}: resumed after epoch {self.epoch}/{self.epochs}{where}")

    def _save(self, partial: dict[str, Any] | None = None) -> None:
        from probekit import _distributed as distributed

        if self.checkpoint is None or not distributed.is_main():
            return
        state: dict[str, Any] = {
            "modules": {name: m.state_dict() for name, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "losses": self.losses,
        }
        if self.validate is not None:
            state["val_losses"] = self.val_losses
            state["best_epoch"] = self.best_epoch
            state["best"] = self._best_state
        if partial is not None:
            state["partial"] = partial
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        ckpt.save(state, self.checkpoint)

    def fit(self, batches: Callable[[torch.Generator], Iterable[Any]],
            step: Callable[[Any], torch.Tensor], *, total: int | None = None, sharded: bool = False
            ) -> list[float]:
        """Train the remaining epochs; return the mean loss of every epoch.

        `batches(generator)` yields one epoch of batches, shuffled with
        `generator` (seeded for the epoch). `step(batch)` returns the loss
        to minimise (the mean over the batch); the trainer does `zero_grad`,
        `backward` and `step`.

        In a distributed run the modules train under DistributedDataParallel.
        With `sharded=True` each process's `batches` yields only its own
        share of every global batch (see `rank_batches`); otherwise every
        process yields whole global batches and the trainer splits them (tensors,
        or tuples/dicts of tensors, along the first dimension).
        """
        from probekit import _distributed as distributed

        world = distributed.world_size()
        parallel: nn.Module | None = None  # DDP over the step, made at the first step
        while self.epoch < self.epochs:
            e_seed = epoch_seed(self.seed, self.epoch, self.tag)
            torch.manual_seed(e_seed)  # dropout and other in-step randomness
            generator = torch.Generator().manual_seed(e_seed)
            for m in self.modules.values():
                m.train()
            total_loss, count, skip = 0.0, 0, 0
            if self._partial is not None:  # continue an epoch interrupted by SIGTERM
                skip = int(self._partial["step"])
                total_loss, count = float(self._partial["loss_sum"]), int(self._partial["count"])
            it: Iterable[Any] = batches(generator)
            if self.progress is not None:
                it = self.progress(it, total=total, desc=f"{self.name} {self.epoch + 1}/{self.epochs}")
            for i, batch in enumerate(it):
                if i < skip:
                    continue
                if i == skip and self._partial is not None:
                    torch.set_rng_state(self._partial["rng"])
                    self._partial = None
                self.optimizer.zero_grad(set_to_none=True)
                if world > 1:
                    local = batch if sharded else distributed.split(batch, distributed.rank(), world)[0]
                    if parallel is None:
                        parallel = self._parallel(_Step(self.modules, step), local)
                    value, stop = self._distributed_step(parallel, local, world)
                else:
                    stop = _stop_requested
                    with self._autocast():
                        loss = step(batch)
                    value = float(loss.detach())
                    if math.isfinite(value):
                        self._backward(loss)
                        self._clip()
                if not math.isfinite(value):
                    kept = (f"the checkpoint after epoch {self.epoch} is kept" if self.checkpoint is not None
                            and self.epoch > 0 and self.checkpoint.exists() else "no checkpoint was written yet")
                    raise RunError(
                        f"{self.name}: loss is {value} at epoch {self.epoch + 1}, step {i + 1} ({kept}). Lower "
                        f"the learning rate or check the data; a changed spec starts again (--overwrite or a "
                        f"new -o), --resume continues only the same spec.")
                if self._scaler is not None:
                    self._scaler.step(self.optimizer)
                    self._scaler.update()
                else:
                    self.optimizer.step()
                total_loss += value
                count += 1
                if stop:
                    self._save({"step": i + 1, "loss_sum": total_loss, "count": count,
                                "rng": torch.get_rng_state()})
                    raise StopRequested(f"{self.name}: stopped on request at epoch {self.epoch + 1}, "
                                        f"step {i + 1}, after saving a checkpoint; continue with --resume")
            if self._partial is not None:  # stopped after the epoch's last step: nothing was left to run
                torch.set_rng_state(self._partial["rng"])
                self._partial = None
            if self.scheduler is not None:
                self.scheduler.step()
            self.losses.append(total_loss / max(count, 1))
            self.epoch += 1
            val = self._validate()
            self._save()
            self.log(f"{self.name} epoch {self.epoch}/{self.epochs}: loss {self.losses[-1]:.6g}"
                     + (f", validation loss {val:.6g}" + (" (best)" if self.best_epoch == self.epoch else "")
                        if val is not None else ""))
        for m in self.modules.values():
            m.eval()
        return list(self.losses)

    def _validate(self) -> float | None:
        """The validation loss after an epoch; keeps a copy of the weights when it is the best so far."""
        if self.validate is None:
            return None
        for m in self.modules.values():
            m.eval()
        with torch.no_grad():
            val = float(self.validate())
        for m in self.modules.values():
            m.train()
        self.val_losses.append(val)
        if self.best_epoch is None or val < self.val_losses[self.best_epoch - 1]:
            self.best_epoch = self.epoch
            self._best_state = {name: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
                                for name, m in self.modules.items()}
        return val

    def restore_best(self) -> int | None:
        """Load the weights of the epoch with the lowest validation loss; returns that epoch (1-based),
        or None (and leaves the last weights) when the trainer has no `validate`."""
        if self._best_state is None:
            return None
        for name, module in self.modules.items():
            module.load_state_dict(self._best_state[name])
        return self.best_epoch

    def _clip(self) -> None:
        """Clip the gradients' global norm to `grad_clip` (after unscaling fp16 gradients)."""
        if self.grad_clip is None:
            return
        if self._scaler is not None:
            self._scaler.unscale_(self.optimizer)
        params = [p for m in self.modules.values() for p in m.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.grad_clip)

    def _device_type(self) -> str:
        return self._device().type

    def _autocast(self) -> Any:
        return autocast(self.precision, self._device_type())

    def _backward(self, loss: torch.Tensor) -> None:
        if self.precision == "fp16" and self._device_type() == "cuda":
            if self._scaler is None:
                self._scaler = torch.amp.GradScaler("cuda")
            self._scaler.scale(loss).backward()
        else:
            loss.backward()

    def _parallel(self, module: _Step, local: Any) -> nn.Module:
        """`module` under DDP. One forward pass in eval mode (RNG untouched) finds out whether the step
        leaves parameters unused; only then does DDP search the graph for them every step."""
        from probekit import _distributed as distributed

        device = self._device()
        unused: list[nn.Parameter] = []
        if distributed.local_size(local):
            training = {m: m.training for m in module.modules()}
            module.eval()
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                with torch.enable_grad(), self._autocast():
                    unused = distributed.unused_parameters(module, module(local, 1.0))
            for m, mode in training.items():
                m.train(mode)
        ids = {id(p) for p in unused}
        module.used = next((p for p in module.parameters() if p.requires_grad and id(p) not in ids), None)
        n_unused = int(distributed.all_reduce_sum(torch.tensor(float(len(unused)), device=device)))
        module.finds_unused = n_unused > 0
        return distributed.wrap(module, find_unused_parameters=module.finds_unused)

    def _distributed_step(self, parallel: nn.Module, local: Any, world: int) -> tuple[float, bool]:
        """One step on this rank's share; weighing each rank's mean loss by its share of the global
        batch makes DDP's gradient average the gradient of the global batch mean.

        Returns the global loss and whether any rank was asked to stop: all ranks then stop after
        the same step (a rank stopping alone would leave the others waiting for it).
        """
        from probekit import _distributed as distributed

        n_local = distributed.local_size(local)
        device = self._device()
        n_global = float(distributed.all_reduce_sum(torch.tensor(float(n_local), device=device)))
        with self._autocast():
            loss = parallel(local if n_local else None, n_local * world / n_global)
        self._backward(loss)
        self._clip()
        loss_and_stop = torch.stack([loss.detach().float() / world,
                                     torch.tensor(float(_stop_requested), device=loss.device)])
        value, stops = distributed.all_reduce_sum(loss_and_stop).tolist()
        return value, stops > 0

    def _device(self) -> torch.device:
        for m in self.modules.values():
            for p in m.parameters():
                return p.device
        return torch.device("cpu")


class _Step(nn.Module):
    """A probe's step function as a module over the trained modules, so that DistributedDataParallel
    registers their parameters and sees every forward (the step may call the modules in any way)."""

    def __init__(self, modules: Mapping[str, nn.Module], step: Callable[[Any], torch.Tensor]):
        super().__init__()
        # ModuleDict keys cannot hold dots or spaces; the names only matter to the checkpoint
        self.trained = nn.ModuleDict({str(i): m for i, m in enumerate(modules.values())})
        self.step = step
        self.finds_unused = False  # whether DDP searches the graph for unused parameters
        self.used: nn.Parameter | None = None  # one parameter the step uses

    def forward(self, batch: Any, weight: float) -> torch.Tensor:
        if batch is None:  # this rank's share of a small last batch is empty: contribute zero gradients
            params = [p for p in self.parameters() if p.requires_grad]
            if self.finds_unused and self.used is not None:  # DDP counts the untouched ones as unused
                params = [self.used]
            return torch.stack([(p * 0).sum() for p in params]).sum()
        return self.step(batch) * weight
