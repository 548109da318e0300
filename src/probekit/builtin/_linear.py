from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from probekit._batchsize import resolve_batch_size
from probekit._probe import Probe
from probekit._training import Trainer

if TYPE_CHECKING:
    from probekit._context import RunContext


def pool_states(x: torch.Tensor, pool: str, max_features: int) -> torch.Tensor:
    """Turn a batch of layer states into vectors (see LinearProbeOptions.pool)."""
    if x.dim() == 2:
        return x
    if pool == "flatten" or (pool == "auto" and x[0].numel() <= max_features):
        return x.flatten(1)
    if pool == "cls":
        if x.dim() != 3:
            raise ValueError("pool=cls needs token states (N, tokens, width)")
        return x[:, 0]
    if x.dim() == 3:  # tokens: mean over tokens
        return x.mean(1)
    if x.dim() == 4:
        if pool == "mean":
            return x.mean((2, 3))
        side = max(1, int(math.sqrt(max_features / x.shape[1])))
        return F.adaptive_avg_pool2d(x, side).flatten(1)
    return x.flatten(1)


class LinearProbe(Probe):
    """Trains `nn.Linear` on each layer's (pooled, standardised) states; reports test accuracy."""

    def __init__(self, layers: list[str] | str, epochs: int = 30, lr: float = 1e-2, batch_size: int = 256,
                 weight_decay: float = 1e-4, pool: str = "auto", max_features: int = 8192):
        self.layer_names = layers
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size
        self.batch_option = batch_size  # an int or "auto"; self.batch_size: the current layer's
        self.weight_decay, self.pool, self.max_features = weight_decay, pool, max_features
        self.classifiers: dict[str, nn.Linear] = {}
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.train_losses: dict[str, list[float]] = {}

    def _layers(self, run: RunContext) -> list[str]:
        if self.layer_names == "all":
            return [layer.name for layer in run.model.layers()]
        for name in self.layer_names:
            run.model.layer(name)  # raises with the list of valid names
        return list(self.layer_names)

    def _features(self, run: RunContext, names: list[str], split: str) -> Any:
        # Pool before caching: the probe needs vectors only, and raw maps can be large.
        return run.features(names, split, transform=lambda n, t: pool_states(t, self.pool, self.max_features),
                            transform_id=f"pool={self.pool},max={self.max_features}")

    @staticmethod
    def _column(feats: Any, name: str) -> torch.Tensor:
        """Every row of one cached array (a layer's vectors, or the labels), in dataset order."""
        return torch.cat([b[name] for b in feats.batches(4096, names=[name])])

    def fit(self, run: RunContext) -> None:
        names = self._layers(run)
        feats = self._features(run, names, "train")
        labels = self._column(feats, "labels")
        num_classes = max(run.data.info.num_classes, int(labels.max()) + 1)
        for name in names:
            x = self._column(feats, name).float()
            mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
            self.stats[name] = (mean, std)
            x = ((x - mean) / std).to(run.device)
            y = labels.to(run.device)
            torch.manual_seed(run.seed)
            clf = nn.Linear(x.shape[1], num_classes).to(run.device)
            opt = torch.optim.Adam(clf.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            # batch_size auto: the largest batch that fits, searched once per layer, kept for --resume
            self.batch_size = resolve_batch_size(
                run, f"linear {name}", self.batch_option,
                lambda b, clf=clf, x=x, y=y: F.cross_entropy(clf(x[torch.arange(b, device=x.device)]),
                                                             y[torch.arange(b, device=y.device)]),
                modules=[clf], maximum=len(x))
            safe = name.replace("/", "_")
            trainer = Trainer({"linear": clf}, opt, epochs=self.epochs, seed=run.seed, tag=f"linear {name}",
                              checkpoint=run.checkpoint_dir / f"linear-{safe}.pt", progress=run.progress,
                              log=run.debug)
            from probekit._distributed import rank_batches

            n = len(x)
            self.train_losses[name] = trainer.fit(
                lambda g, n=n: rank_batches(n, self.batch_size, g),
                lambda idx, clf=clf, x=x, y=y: F.cross_entropy(clf(x[idx.to(x.device)]), y[idx.to(y.device)]),
                sharded=True)
            self.classifiers[name] = clf

    def evaluate(self, run: RunContext) -> dict[str, Any]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self.classifiers)
        test = self._features(run, names, "test")
        train = self._features(run, names, "train")
        acc: dict[str, float] = {}
        train_acc: dict[str, float] = {}
        splits = [(test, self._column(test, "labels").to(run.device), acc),
                  (train, self._column(train, "labels").to(run.device), train_acc)]
        rows = []
        for name in names:
            clf = self.classifiers[name].eval()
            mean, std = self.stats[name]
            for feats, y, out in splits:
                x = ((self._column(feats, name).float() - mean) / std).to(run.device)
                with torch.no_grad():
                    out[name] = float((clf(x).argmax(1) == y).float().mean())
            rows.append({"layer": name, "metric": "accuracy", "value": acc[name]})
            rows.append({"layer": name, "metric": "train_accuracy", "value": train_acc[name]})
        run.write_csv("results.csv", rows, ["layer", "metric", "value"])
        chance = 1.0 / max(run.data.info.num_classes, 1)

        fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.4))
        ax.plot(range(len(names)), [acc[n] for n in names], "o-", label="test")
        ax.plot(range(len(names)), [train_acc[n] for n in names], "s--", alpha=0.6, label="train")
        ax.axhline(chance, color="gray", lw=0.8, ls=":", label="chance")
        labels = []
        for n in names:
            module_type = run.model.layer(n).meta.get("module_type")
            labels.append(f"{n} ({module_type})" if module_type else n)
        ax.set_xticks(range(len(names)), labels, rotation=45, ha="right")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("layer (depth order)")
        ax.set_ylabel("linear probe accuracy")
        ax.set_title(f"Linear probe: {run.spec.name}")
        ax.legend(loc="lower right", fontsize=8)
        run.save_figure(fig, "accuracy_vs_depth.png")

        best = max(names, key=lambda n: acc[n])
        run.add_report("Linear probe", "\n".join(
            ["| layer | test accuracy | train accuracy |", "|---|---|---|"]
            + [f"| `{n}` | {acc[n]:.4f} | {train_acc[n]:.4f} |" for n in names]
            + ["", f"Best layer: `{best}` ({acc[best]:.4f}); chance level {chance:.3f}.", "",
               "![accuracy vs depth](figures/accuracy_vs_depth.png)"]))
        return {"accuracy": acc, "train_accuracy": train_acc, "best_layer": best, "best_accuracy": acc[best]}
