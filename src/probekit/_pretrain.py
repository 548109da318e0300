"""`model.train`: fit a model as a classifier before probing, with weights cached by hash.

The cache key covers the model's initial weights, the training options, the data
and the seed, so the same spec reuses the trained weights and any change retrains.
Training checkpoints every epoch into the run directory, so a killed run resumes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from probekit._adapter import ModelAdapter
from probekit._cache import cache_key

if TYPE_CHECKING:
    from probekit._context import RunContext


def train_classifier(run: RunContext, adapter: ModelAdapter) -> dict[str, float]:
    """Train `adapter.model` on the spec's `model.train` settings (or load the cached result)."""
    from safetensors.torch import save as safetensors_bytes

    from probekit._batchsize import resolve_batch_size
    from probekit._checkpoint import atomic_open, write_json
    from probekit._data import SPLIT_VERSION, build_data
    from probekit._distributed import rank_batches
    from probekit._spec import DataSpec
    from probekit._training import Trainer

    opts = run.spec.model.train
    if opts.data is not None:
        section = DataSpec.model_validate(opts.data)
        bundle = build_data(run, section, run.options["model.train.data"])
        data_id = {"type": section.type, "options": run.options["model.train.data"], "limit": section.limit,
                   "split": SPLIT_VERSION}
    else:
        bundle = run.data
        data_id = run.data_fingerprint()
    key = cache_key(init=adapter.fingerprint(), train=opts.model_dump(), data=data_id, seed=run.seed)
    folder = run.cache_dir / "models"
    weights = folder / f"{key}.safetensors"
    record = folder / f"{key}.json"
    cached = _cached_weights(run, weights, record)
    if cached is not None:
        adapter.model.load_state_dict({k: v.to(run.device) for k, v in cached.items()})
        trained_with = ""
        if opts.batch_size == "auto":  # the size found when the weights were trained
            size = json.loads(record.read_text()).get("train", {}).get("batch_size")
            trained_with = f" (trained with batch_size auto: {size})"
        info = json.loads(record.read_text())
        scores = _scores(info)
        run.log(f"model.train: loaded cached weights {weights}{trained_with}"
                + (f"; {_describe(scores)}" if scores else ""))
        return scores

    model = adapter.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if opts.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=opts.lr, momentum=0.9,
                                                     weight_decay=opts.weight_decay)
    elif opts.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
    all_images = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
    all_labels = torch.stack([torch.as_tensor(bundle.train[i][1]) for i in range(len(bundle.train))])
    validate = None
    if opts.keep == "best":  # a validation split of the training images, not trained on
        perm = torch.randperm(len(all_images), generator=torch.Generator().manual_seed(run.seed))
        n_val = max(1, int(round(len(all_images) * opts.val_fraction)))
        val_idx, fit_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
        val_images, val_labels = all_images[val_idx], all_labels[val_idx]
        images, labels = all_images[fit_idx], all_labels[fit_idx]

        def validate() -> float:
            total = 0.0
            for start in range(0, len(val_images), 256):
                x = adapter.preprocess(val_images[start:start + 256].to(run.device))
                out = adapter.logits(adapter.forward(x))
                total += float(F.cross_entropy(out, val_labels[start:start + 256].to(run.device), reduction="sum"))
            return total / len(val_images)
    else:
        images, labels = all_images, all_labels
    run.log(f"model.train: fitting {type(model).__name__} on {len(images)} images for {opts.epochs} epochs"
            + (f" (keeping the epoch with the lowest loss on {len(all_images) - len(images)} validation images)"
               if validate is not None else "") + (f", gradient norm clipped to {opts.grad_clip:g}"
                                                    if opts.grad_clip else ""))

    def step(idx: torch.Tensor) -> torch.Tensor:
        x = adapter.preprocess(images[idx].to(run.device))
        return F.cross_entropy(adapter.logits(adapter.forward(x)), labels[idx].to(run.device))

    trainer = Trainer({"model": model}, opt, epochs=opts.epochs, seed=run.seed, tag="model.train",
                      checkpoint=run.checkpoint_dir / "model-train.pt", progress=run.progress, log=run.debug,
                      grad_clip=opts.grad_clip, validate=validate,
                      scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=opts.epochs)
                      if opts.lr_schedule == "cosine" else None)
    # batch_size auto: the largest batch that fits, searched once and kept in checkpoints/ for --resume
    opts = opts.model_copy(update={"batch_size": resolve_batch_size(
        run, "model.train", opts.batch_size, lambda b: step(torch.arange(b)), modules=[model],
        maximum=len(images))})
    n_batches = (len(images) + opts.batch_size - 1) // opts.batch_size
    losses = trainer.fit(lambda g: rank_batches(len(images), opts.batch_size, g), step, total=n_batches,
                         sharded=True)
    best_epoch = trainer.restore_best() if opts.keep == "best" else None
    model.eval()
    from probekit._data import TensorImageDataset

    scores = {"train_accuracy": _accuracy(adapter, TensorImageDataset(images, labels), run),
              "test_accuracy": _accuracy(adapter, bundle.test, run), "epochs": opts.epochs}
    if best_epoch is not None:
        scores["best_epoch"] = best_epoch
    run.log(f"model.train: {_describe(scores)}")
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = safetensors_bytes(state)
    with atomic_open(weights, "wb") as f:
        f.write(data)
    # the record is written last: weights without a record (a kill in between) are trained again
    write_json(record, {"losses": losses, "val_losses": trainer.val_losses, **scores, "train": opts.model_dump(),
                        "sha256": hashlib.sha256(data).hexdigest()})
    return scores


def _scores(info: dict[str, Any]) -> dict[str, Any]:
    """What model.train reports (train and test accuracy, epochs, the kept epoch) from its record."""
    return {k: info[k] for k in ("train_accuracy", "test_accuracy", "epochs", "best_epoch") if k in info}


def _describe(scores: dict[str, Any]) -> str:
    text = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in scores.items() if k.endswith("accuracy"))
    if "best_epoch" in scores:
        text += f" (weights of epoch {scores['best_epoch']}, the lowest validation loss)"
    return text


def _cached_weights(run: RunContext, weights: Path, record: Path) -> dict[str, torch.Tensor] | None:
    """The cached weights when they are whole (their record's SHA-256 matches), else None; a damaged
    entry is logged and removed, so that the model is trained again."""
    from safetensors.torch import load as safetensors_load

    if not weights.exists():
        return None
    try:
        expected = json.loads(record.read_text())["sha256"]
        data = weights.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected:
            raise ValueError("the file does not match its checksum")
        return safetensors_load(data)
    except Exception as exc:  # no record (killed between the writes), old record, damaged file
        why = "it has no record of its checksum" if not record.exists() else f"{type(exc).__name__}: {exc}"
        run.log(f"model.train: cached weights {weights} are not usable ({why}); training again")
        for path in (weights, record):
            path.unlink(missing_ok=True)
        return None


def _accuracy(adapter: ModelAdapter, dataset: Any, run: RunContext) -> float:
    correct = total = 0
    with torch.no_grad():
        for images, labels in run.loader(dataset):
            out = adapter.logits(adapter.forward(adapter.preprocess(images.to(run.device))))
            correct += int((out.argmax(-1).cpu() == labels).sum())
            total += len(labels)
    return correct / max(total, 1)
