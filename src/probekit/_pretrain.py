"""`model.train`: fit a model as a classifier before probing, with weights cached by hash.

The cache key covers the model's initial weights, the training options, the data
and the seed, so the same spec reuses the trained weights and any change retrains.
Training checkpoints every epoch into the run directory, so a killed run resumes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from probekit._adapter import ModelAdapter
from probekit._cache import cache_key

if TYPE_CHECKING:
    from probekit._context import RunContext


def train_classifier(run: RunContext, adapter: ModelAdapter) -> dict[str, float]:
    """Train `adapter.model` on the spec's `model.train` settings (or load the cached result)."""
    from safetensors.torch import load_file
    from safetensors.torch import save as safetensors_bytes

    from probekit._batchsize import resolve_batch_size
    from probekit._checkpoint import atomic_open, write_json
    from probekit._data import build_data
    from probekit._distributed import rank_batches
    from probekit._spec import DataSpec
    from probekit._training import Trainer

    opts = run.spec.model.train
    if opts.data is not None:
        section = DataSpec.model_validate(opts.data)
        bundle = build_data(run, section, run.options["model.train.data"])
        data_id = {"type": section.type, "options": run.options["model.train.data"], "limit": section.limit}
    else:
        bundle = run.data
        data_id = run.data_fingerprint()
    key = cache_key(init=adapter.fingerprint(), train=opts.model_dump(), data=data_id, seed=run.seed)
    folder = run.cache_dir / "models"
    weights = folder / f"{key}.safetensors"
    if weights.exists():
        adapter.model.load_state_dict(load_file(str(weights), device=str(run.device)))
        trained_with = ""
        if opts.batch_size == "auto":  # the size found when the weights were trained
            import json

            record = folder / f"{key}.json"
            size = json.loads(record.read_text()).get("train", {}).get("batch_size") if record.exists() else None
            trained_with = f" (trained with batch_size auto: {size})"
        run.log(f"model.train: loaded cached weights {weights}{trained_with}")
        return {}

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
    images = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
    labels = torch.stack([torch.as_tensor(bundle.train[i][1]) for i in range(len(bundle.train))])
    run.log(f"model.train: fitting {type(model).__name__} on {len(images)} images for {opts.epochs} epochs")

    def step(idx: torch.Tensor) -> torch.Tensor:
        x = adapter.preprocess(images[idx].to(run.device))
        return F.cross_entropy(adapter.logits(adapter.forward(x)), labels[idx].to(run.device))

    trainer = Trainer({"model": model}, opt, epochs=opts.epochs, seed=run.seed, tag="model.train",
                      checkpoint=run.checkpoint_dir / "model-train.pt", progress=run.progress, log=run.debug)
    # batch_size auto: the largest batch that fits, searched once and kept in checkpoints/ for --resume
    opts = opts.model_copy(update={"batch_size": resolve_batch_size(
        run, "model.train", opts.batch_size, lambda b: step(torch.arange(b)), modules=[model],
        maximum=len(images))})
    n_batches = (len(images) + opts.batch_size - 1) // opts.batch_size
    losses = trainer.fit(lambda g: rank_batches(len(images), opts.batch_size, g), step, total=n_batches,
                         sharded=True)
    model.eval()
    accuracy = _accuracy(adapter, bundle.test, run)
    run.log(f"model.train: test accuracy {accuracy:.4f}")
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_open(weights, "wb") as f:
        f.write(safetensors_bytes(state))
    write_json(folder / f"{key}.json", {"losses": losses, "test_accuracy": accuracy, "train": opts.model_dump()})
    return {"test_accuracy": accuracy}


def _accuracy(adapter: ModelAdapter, dataset: Any, run: RunContext) -> float:
    correct = total = 0
    with torch.no_grad():
        for images, labels in run.loader(dataset):
            out = adapter.logits(adapter.forward(adapter.preprocess(images.to(run.device))))
            correct += int((out.argmax(-1).cpu() == labels).sum())
            total += len(labels)
    return correct / max(total, 1)
