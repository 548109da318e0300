"""`model.train`: fit a model as a classifier before probing, with weights cached by hash.

The cache key covers the model's initial weights, the training options, the data
and the seed, so the same spec reuses the trained weights and any change retrains.
Training checkpoints every epoch into the run directory, so a killed run resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from probekit._adapter import ModelAdapter
from probekit._cache import cache_key
from probekit._errors import RunError

if TYPE_CHECKING:
    from probekit._context import RunContext


def train_classifier(run: RunContext, adapter: ModelAdapter) -> dict[str, float]:
    """Train `adapter.model` on the spec's `model.train` settings (or load the cached result)."""
    from probekit import _distributed as distributed
    from probekit._batchsize import resolve_batch_size
    from probekit._checkpoint import save_safetensors, write_checked_json
    from probekit._data import SPLIT_VERSION, build_data, num_examples
    from probekit._distributed import rank_batches
    from probekit._spec import DataSpec
    from probekit._training import Trainer

    if run.spec.model is None or run.spec.model.train is None:
        raise ValueError("train_classifier: the spec has no model.train section")  # the runner checks first
    opts = run.spec.model.train
    if opts.data is not None:
        section = DataSpec.model_validate(opts.data)
        bundle = build_data(run, section, run.options["model.train.data"])
        data_id = {"type": section.type, "options": run.options["model.train.data"], "limit": section.limit,
                   "split": SPLIT_VERSION}
    elif run.data is not None:
        bundle = run.data
        data_id = run.data_fingerprint()
    else:
        raise RunError("model.train has no data: give model.train.data, or a data: section")
    key = cache_key(init=adapter.fingerprint(), train=opts.model_dump(), data=data_id, seed=run.seed)
    folder = run.cache_dir / "models"
    weights = folder / f"{key}.safetensors"
    record = folder / f"{key}.json"
    cached = _cached_weights(run, weights, record)
    if distributed.world_size() > 1 and not all(distributed.all_gather(cached is not None)):
        cached = None  # all ranks train together (collectives): e.g. one node's own cache lacked the weights
    if cached is not None:
        state, info = cached
        adapter.model.load_state_dict({k: v.to(run.device) for k, v in state.items()})
        trained_with = ""
        if opts.batch_size == "auto":  # the size found when the weights were trained
            size = info.get("train", {}).get("batch_size")
            trained_with = f" (trained with batch_size auto: {size})"
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
    all_images = torch.stack([bundle.train[i][0] for i in range(num_examples(bundle.train))])
    all_labels = torch.stack([torch.as_tensor(bundle.train[i][1]) for i in range(num_examples(bundle.train))])
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
    batch_size = resolve_batch_size(run, "model.train", opts.batch_size, lambda b: step(torch.arange(b)),
                                    modules=[model], maximum=len(images))
    opts = opts.model_copy(update={"batch_size": batch_size})
    n_batches = (len(images) + batch_size - 1) // batch_size
    losses = trainer.fit(lambda g: rank_batches(len(images), batch_size, g), step, total=n_batches, sharded=True)
    best_epoch = trainer.restore_best() if opts.keep == "best" else None
    model.eval()
    from probekit._data import TensorImageDataset

    scores = {"train_accuracy": _accuracy(adapter, TensorImageDataset(images, labels), run),
              "test_accuracy": _accuracy(adapter, bundle.test, run), "epochs": opts.epochs}
    if best_epoch is not None:
        scores["best_epoch"] = best_epoch
    run.log(f"model.train: {_describe(scores)}")
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(model.state_dict(), weights)  # with its checksum
    # the record (checksummed too) is written last: weights without a record (a kill in between) are
    # trained again; it holds the weights' checksum, so a record never vouches for other weights
    write_checked_json(record, {"losses": losses, "val_losses": trainer.val_losses, **scores,
                                "train": opts.model_dump(), "weights_sha256": _weights_checksum(weights)})
    return scores


def _scores(info: dict[str, Any]) -> dict[str, Any]:
    """What model.train reports (train and test accuracy, epochs, the kept epoch) from its record."""
    return {k: info[k] for k in ("train_accuracy", "test_accuracy", "epochs", "best_epoch") if k in info}


def _describe(scores: dict[str, Any]) -> str:
    text = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in scores.items() if k.endswith("accuracy"))
    if "best_epoch" in scores:
        text += f" (weights of epoch {scores['best_epoch']}, the lowest validation loss)"
    return text


def _weights_checksum(weights: Path) -> str | None:
    """The checksum `save_safetensors` put in the metadata of `weights` (None: none there)."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        return (f.metadata() or {}).get("probekit-sha256")


def _cached_weights(run: RunContext, weights: Path, record: Path
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The cached weights and their record when both are whole (checksums match) and belong together,
    else None; a damaged entry is logged and removed, so that the model is trained again."""
    from probekit._checkpoint import CorruptCheckpointError, load_safetensors, read_checked_json

    if not weights.exists():
        return None
    try:
        if not record.exists():
            raise CorruptCheckpointError("it has no record (the run stopped between the two writes)")
        info = read_checked_json(record)
        state = load_safetensors(weights)
        if info.get("weights_sha256") != _weights_checksum(weights):
            raise CorruptCheckpointError(f"its record {record.name} was written for other weights")
    except (CorruptCheckpointError, OSError) as exc:  # a damaged file, a record of other weights
        run.log(f"model.train: cached weights {weights} are not usable ({exc}); training again")
        for path in (weights, record):
            path.unlink(missing_ok=True)
        return None
    return state, info


def _accuracy(adapter: ModelAdapter, dataset: Any, run: RunContext) -> float:
    correct = total = 0
    with torch.no_grad():
        for images, labels in run.loader(dataset):
            out = adapter.logits(adapter.forward(adapter.preprocess(images.to(run.device))))
            correct += int((out.argmax(-1).cpu() == labels).sum())
            total += len(labels)
    return correct / max(total, 1)
