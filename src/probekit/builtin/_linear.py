"""The `linear` probe: multinomial logistic regression on each layer's frozen, standardised features.

The default solver is full-batch L-BFGS in torch, solved to convergence (the largest absolute entry
of the gradient of the mean loss at most `tol`), with the L2 strength `C` chosen on a validation split
carved from the training rows, then refit on all of them: the usual linear-probe protocol, and the
objective of scikit-learn's `LogisticRegression(C=C, solver="lbfgs")` (mean cross-entropy plus
`||W||^2 / (2 C n)`, the bias not penalised). Feature sets larger than `stream_above_mb` are not
loaded: every loss and gradient evaluation streams them from the feature cache in chunks.
`solver: sgd` keeps the older fixed-epoch Adam training (`epochs`, `lr`, `batch_size`, `weight_decay`)
for feature sets too large for full-batch passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from probekit._probe import Probe
from probekit._stats import Interval, baseline_warning, compare

if TYPE_CHECKING:
    from probekit._batchsize import BatchSizeOption
    from probekit._context import RunContext
    from probekit._seeds import SeedResults


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


class _Rows:
    """Standardised rows of one layer (a subset of a split), in memory or streamed from the cache."""

    def __init__(self, feats: Any, name: str, index: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, device: torch.device, chunk: int, in_memory: bool):
        self.feats, self.name, self.index = feats, name, index
        self.mean, self.std = mean.to(device), std.to(device)
        self.device, self.chunk = device, chunk
        self.y = labels[index].to(device)
        self.x: torch.Tensor | None = None
        if in_memory:  # held in float64, the solver's precision
            self.x = torch.cat([x.double() for x, _ in self._read()]) if len(index) else \
                torch.empty(0, len(mean), dtype=torch.float64, device=device)

    def __len__(self) -> int:
        return len(self.index)

    def _read(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.index), self.chunk):
            idx = self.index[start:start + self.chunk]
            x = self.feats.batch(idx, names=[self.name])[self.name].to(self.device, torch.float32)
            yield (x - self.mean) / self.std, self.y[start:start + self.chunk]

    def chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.x is None:
            yield from self._read()
            return
        for start in range(0, len(self.index), self.chunk):
            yield self.x[start:start + self.chunk], self.y[start:start + self.chunk]


def _standardisation(feats: Any, name: str, index: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (ddof 1, at least 1e-6) of the rows `index`, in float64, streamed."""
    total: torch.Tensor | None = None
    sq: torch.Tensor | None = None
    for start in range(0, len(index), chunk):
        x = feats.batch(index[start:start + chunk], names=[name])[name].double()
        total = x.sum(0) if total is None else total + x.sum(0)
        sq = (x * x).sum(0) if sq is None else sq + (x * x).sum(0)
    if total is None or sq is None:
        raise ValueError(f"no rows to standardise layer {name!r} on")
    n = len(index)
    mean = total / n
    var = (sq - n * mean * mean) / max(n - 1, 1)
    return mean.float(), var.clamp_min(0).sqrt().clamp_min(1e-6).float()


def fit_logistic(rows: _Rows, num_classes: int, C: float, *, tol: float, max_iter: int,
                 init: nn.Linear | None = None) -> tuple[nn.Linear, int, bool, float]:
    """Minimise mean cross-entropy + ||W||^2 / (2 C n) by full-batch L-BFGS in float64 (in float32 the
    loss stops changing before the gradient reaches a tight `tol`).

    Returns (classifier in float32, iterations, converged, largest absolute gradient entry); converged
    means that entry is at most `tol`. L-BFGS is restarted from where it stopped (e.g. when the loss no
    longer changes in floating point) until it converges or has run `max_iter` iterations in all.
    """
    from probekit._training import StopRequested, stop_requested

    dim = len(rows.mean)
    clf = nn.Linear(dim, num_classes).to(rows.device, torch.float64)
    with torch.no_grad():
        if init is not None:
            clf.load_state_dict({k: v.double() for k, v in init.state_dict().items()})
        else:
            clf.weight.zero_()
            clf.bias.zero_()
    n = len(rows)
    reg = 1.0 / (C * n)

    def closure() -> torch.Tensor:
        if stop_requested():  # SIGTERM: the layers fitted so far are checkpointed; --resume fits the rest
            raise StopRequested("stopped on request while fitting the linear probe; continue with --resume")
        clf.zero_grad(set_to_none=False)
        total = torch.zeros((), device=rows.device, dtype=torch.float64)
        for x, y in rows.chunks():  # the full-batch loss and gradient, accumulated over chunks
            loss = F.cross_entropy(clf(x.double()), y, reduction="sum") / n
            loss.backward()
            total = total + loss.detach()
        penalty = 0.5 * reg * (clf.weight * clf.weight).sum()
        penalty.backward()
        return total + penalty.detach()

    def largest_gradient() -> float:
        closure()
        return max(float(p.grad.abs().max()) for p in clf.parameters() if p.grad is not None)

    iterations = 0
    largest = largest_gradient()
    while largest > tol and iterations < max_iter:
        opt = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=max_iter - iterations, tolerance_grad=tol,
                                tolerance_change=0.0, history_size=20, line_search_fn="strong_wolfe")
        opt.step(closure)
        done = int(opt.state[opt._params[0]].get("n_iter", 0))
        iterations += done
        largest = largest_gradient()
        if done == 0:  # no progress is possible from here
            break
    out = nn.Linear(dim, num_classes).to(rows.device)
    out.load_state_dict({k: v.float() for k, v in clf.state_dict().items()})
    return out.eval(), iterations, largest <= tol, largest


def _accuracy(clf: nn.Linear, rows: _Rows) -> float:
    correct = 0
    with torch.no_grad():
        for x, y in rows.chunks():
            correct += int((clf(x.to(clf.weight.dtype)).argmax(1) == y).sum())
    return correct / max(len(rows), 1)


class LinearProbe(Probe):
    """Multinomial logistic regression per layer on standardised features; test accuracy vs depth."""

    def __init__(self, layers: list[str] | str, solver: str = "lbfgs", C: float | str = "auto",
                 c_grid: list[float] | None = None, val_fraction: float = 0.2, tol: float = 1e-6,
                 max_iter: int = 1000, stream_above_mb: float = 2048, chunk_rows: int = 8192,
                 epochs: int = 30, lr: float = 1e-2, batch_size: BatchSizeOption = 256, weight_decay: float = 1e-4,
                 pool: str = "auto", max_features: int = 8192):
        self.layer_names = layers
        self.solver, self.C, self.c_grid = solver, C, list(c_grid or [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
        self.val_fraction, self.tol, self.max_iter = val_fraction, tol, max_iter
        self.stream_above_mb, self.chunk_rows = stream_above_mb, chunk_rows
        self.epochs, self.lr = epochs, lr
        self.batch_option = batch_size  # an int or "auto"; self.batch_size: the current layer's
        self.batch_size = batch_size if isinstance(batch_size, int) else 0  # set by resolve_batch_size
        self.weight_decay, self.pool, self.max_features = weight_decay, pool, max_features
        self.classifiers: dict[str, nn.Linear] = {}
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.fits: dict[str, dict[str, Any]] = {}  # layer -> C, iterations, converged, gradient, val accuracy
        self.train_losses: dict[str, list[float]] = {}

    def _features(self, run: RunContext, names: list[str], split: str) -> Any:
        # Pool before caching: the probe needs vectors only, and raw maps can be large.
        return run.features(names, split, transform=lambda n, t: pool_states(t, self.pool, self.max_features),
                            transform_id=f"pool={self.pool},max={self.max_features}")

    @staticmethod
    def _column(feats: Any, name: str) -> torch.Tensor:
        """Every row of one cached array (a layer's vectors, or the labels), in dataset order."""
        return torch.cat([b[name] for b in feats.batches(4096, names=[name])])

    def _in_memory(self, feats: Any, name: str, rows: int) -> bool:
        dim = int(math.prod(feats.shape(name)))
        return rows * dim * 8 <= self.stream_above_mb * 2**20  # float64

    # -- fit -------------------------------------------------------------------------
    def fit(self, run: RunContext) -> None:
        names = run.require_model().layer_names(self.layer_names)
        feats = self._features(run, names, "train")
        labels = self._column(feats, "labels").long()
        self.num_classes = max(run.require_data().info.num_classes, int(labels.max()) + 1)
        if self.solver == "sgd":
            self._fit_sgd(run, names, feats, labels)
            return
        for name in names:
            self._fit_lbfgs(run, name, feats, labels)

    def _checkpoint(self, run: RunContext, name: str) -> Any:
        return run.checkpoint_dir / f"linear-{name.replace('/', '_')}.pt"

    def _fit_lbfgs(self, run: RunContext, name: str, feats: Any, labels: torch.Tensor) -> None:
        from probekit import _distributed as distributed
        from probekit._checkpoint import CorruptCheckpointError, load, save

        path = self._checkpoint(run, name)
        dim = int(math.prod(feats.shape(name)))
        state = None
        if path.exists():
            try:
                state = load(path)
            except CorruptCheckpointError as exc:  # fitted again: deterministic, so only time is lost
                aside = path.with_name(path.name + ".corrupt")
                path.replace(aside)
                run.log(f"linear {name}: {exc}; moved to {aside.name}, fitting again")
        if state is not None:
            clf = nn.Linear(dim, self.num_classes).to(run.device)
            clf.load_state_dict(state["classifier"])
            self.classifiers[name] = clf.eval()
            self.stats[name] = (state["mean"], state["std"])
            self.fits[name] = dict(state["fit"])
            run.log(f"linear {name}: resumed from its checkpoint (C {self.fits[name]['C']:g})")
            return
        n = len(labels)
        everything = torch.arange(n)
        in_memory = self._in_memory(feats, name, n)
        mean, std = _standardisation(feats, name, everything, self.chunk_rows)
        chosen, val_acc = self._choose_c(run, name, feats, labels, mean, std, in_memory)
        rows = _Rows(feats, name, everything, labels, mean, std, run.device, self.chunk_rows, in_memory)
        clf, iters, converged, grad = fit_logistic(rows, self.num_classes, chosen, tol=self.tol,
                                                   max_iter=self.max_iter)
        fit = {"C": chosen, "iterations": iters, "converged": converged, "gradient": grad,
               "val_accuracy": val_acc, "streamed": not in_memory}
        run.log(f"linear {name}: {dim} features, C {chosen:g}" + (f" (validation accuracy {val_acc:.4f})"
                if val_acc is not None else "") + f", L-BFGS {iters} iterations, "
                + ("converged" if converged else f"NOT converged (largest gradient {grad:.2g} > tol {self.tol:g})"))
        if not converged:
            run.warn(f"linear probe at `{name}` did not converge in {self.max_iter} L-BFGS iterations (largest "
                     f"gradient entry {grad:.2g} > tol {self.tol:g}); raise probe.max_iter")
        self.classifiers[name], self.stats[name], self.fits[name] = clf, (mean, std), fit
        if distributed.is_main():
            save({"classifier": clf.state_dict(), "mean": mean, "std": std, "fit": fit}, path)

    def _choose_c(self, run: RunContext, name: str, feats: Any, labels: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor, in_memory: bool) -> tuple[float, float | None]:
        """The C of the grid with the best accuracy on a validation split of the training rows
        (standardised with the statistics of all training rows); a fixed `C` is used as given."""
        if self.C != "auto":
            return float(self.C), None
        n = len(labels)
        g = run.generator(f"linear validation {name}")
        perm = torch.randperm(n, generator=g)
        n_val = max(1, int(round(n * self.val_fraction)))
        val_idx, fit_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
        fit_rows = _Rows(feats, name, fit_idx, labels, mean, std, run.device, self.chunk_rows, in_memory)
        val_rows = _Rows(feats, name, val_idx, labels, mean, std, run.device, self.chunk_rows, in_memory)
        best: tuple[float, float] | None = None
        scores = []
        previous = None
        for c in sorted(self.c_grid):  # weakest penalty last; each fit starts from the previous solution
            clf, iters, converged, _ = fit_logistic(fit_rows, self.num_classes, c, tol=self.tol,
                                                    max_iter=self.max_iter, init=previous)
            previous = clf
            acc = _accuracy(clf, val_rows)
            scores.append(f"C {c:g}: {acc:.4f}" + ("" if converged else " (not converged)"))
            if best is None or acc > best[1]:
                best = (c, acc)
        run.debug(f"linear {name}: validation accuracy ({n - n_val} fit / {n_val} validation rows): "
                  + ", ".join(scores))
        assert best is not None
        return best

    def _fit_sgd(self, run: RunContext, names: list[str], feats: Any, labels: torch.Tensor) -> None:
        """The fixed-epoch Adam fallback (`solver: sgd`): not converged by construction."""
        from probekit._batchsize import resolve_batch_size
        from probekit._distributed import rank_batches
        from probekit._training import Trainer

        for name in names:
            x = self._column(feats, name).float()
            mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
            self.stats[name] = (mean, std)
            x = ((x - mean) / std).to(run.device)
            y = labels.to(run.device)
            torch.manual_seed(run.seed)
            clf = nn.Linear(x.shape[1], self.num_classes).to(run.device)
            opt = torch.optim.Adam(clf.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            def loss(idx: torch.Tensor, clf: nn.Linear = clf, x: torch.Tensor = x,
                     y: torch.Tensor = y) -> torch.Tensor:
                return F.cross_entropy(clf(x[idx.to(x.device)]), y[idx.to(y.device)])

            # batch_size auto: the largest batch that fits, searched once per layer, kept for --resume
            self.batch_size = resolve_batch_size(run, f"linear {name}", self.batch_option,
                                                 lambda b: loss(torch.arange(b)), modules=[clf], maximum=len(x))
            trainer = Trainer({"linear": clf}, opt, epochs=self.epochs, seed=run.seed, tag=f"linear {name}",
                              checkpoint=self._checkpoint(run, name), progress=run.progress, log=run.debug)
            self.train_losses[name] = trainer.fit(partial(rank_batches, len(x), self.batch_size), loss, sharded=True)
            self.classifiers[name] = clf
            self.fits[name] = {"C": None, "iterations": self.epochs, "converged": False, "gradient": None,
                               "val_accuracy": None, "streamed": False}

    # -- evaluate ----------------------------------------------------------------------
    def evaluate(self, run: RunContext) -> dict[str, Any]:
        names = list(self.classifiers)
        test = self._features(run, names, "test")
        train = self._features(run, names, "train")
        test_labels = self._column(test, "labels").long()
        train_labels = self._column(train, "labels").long()
        acc: dict[str, float] = {}
        train_acc: dict[str, float] = {}
        for name in names:
            mean, std = self.stats[name]
            for feats, labels, out in ((test, test_labels, acc), (train, train_labels, train_acc)):
                rows = _Rows(feats, name, torch.arange(len(labels)), labels, mean, std, run.device,
                             self.chunk_rows, self._in_memory(feats, name, len(labels)))
                out[name] = _accuracy(self.classifiers[name], rows)
        # the trivial baseline: always answering the test set's most frequent class
        chance = float(torch.bincount(test_labels).max()) / max(len(test_labels), 1)
        rows_out: list[dict[str, Any]] = []
        for name in names:
            fit = self.fits[name]
            rows_out += [{"layer": name, "metric": "accuracy", "value": acc[name]},
                         {"layer": name, "metric": "train_accuracy", "value": train_acc[name]}]
            if self.solver == "lbfgs":
                rows_out += [{"layer": name, "metric": "C", "value": fit["C"]},
                             {"layer": name, "metric": "iterations", "value": fit["iterations"]},
                             {"layer": name, "metric": "converged", "value": int(fit["converged"])}]
        rows_out.append({"layer": "baseline", "metric": "chance_accuracy", "value": chance})
        run.write_csv("results.csv", rows_out, ["layer", "metric", "value"], keys=["layer", "metric"])

        types = {}
        for n in names:
            module_type = run.model.layer(n).meta.get("module_type") if run.model is not None else None
            if module_type:
                types[n] = module_type
        one = {n: Interval.of([acc[n]]) for n in names}
        one_train = {n: Interval.of([train_acc[n]]) for n in names}
        _figure(run, names, one, one_train, Interval.of([chance]), types)
        _report(run, names, one, one_train, Interval.of([chance]), self.fits if self.solver == "lbfgs" else None)
        best = max(names, key=lambda n: acc[n])
        results: dict[str, Any] = {"accuracy": acc, "train_accuracy": train_acc, "chance_accuracy": chance,
                                   "best_layer": best, "best_accuracy": acc[best]}
        if self.solver == "lbfgs":
            results["C"] = {n: self.fits[n]["C"] for n in names}
            results["iterations"] = {n: self.fits[n]["iterations"] for n in names}
            results["converged"] = {n: self.fits[n]["converged"] for n in names}
        if types:
            results["layer_types"] = types
        return results

    # -- over seeds --------------------------------------------------------------------
    def summarize(self, run: RunContext, results: SeedResults) -> None:
        """Accuracy vs depth with 95 % intervals over seeds, findings and baseline warnings."""
        table = results.table("results.csv")
        first = results.metrics[results.seeds[0]]
        # depth order: the order of results.csv's rows (metrics.json's keys are sorted as text)
        names = list(dict.fromkeys(r["layer"] for r in table.summary if r["metric"] == "accuracy"))
        test = {n: table.interval("value", layer=n, metric="accuracy") for n in names}
        train = {n: table.interval("value", layer=n, metric="train_accuracy") for n in names}
        chance = table.interval("value", layer="baseline", metric="chance_accuracy")
        _figure(run, names, test, train, chance, first.get("layer_types", {}))
        converged = {n: all(results.values("converged", n)) for n in names} if "converged" in first else None
        _report(run, names, test, train, chance, None, converged=converged)


def _figure(run: RunContext, names: list[str], test: dict[str, Interval], train: dict[str, Interval],
            chance: Interval, types: dict[str, str]) -> None:
    """figures/accuracy_vs_depth.png: test and train accuracy per layer (95 % intervals over seeds as
    error bars when there are several) and the chance baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(len(names)))
    n = max(iv.n for iv in test.values())

    def errs(ivs: dict[str, Interval]) -> Any:
        return [ivs[k].ci95 if ivs[k].n > 1 else 0.0 for k in names] if n > 1 else None

    fig, ax = plt.subplots(figsize=(max(4.5, 0.65 * len(names) + 2.5), 3.6))
    ax.errorbar(xs, [test[k].mean for k in names], yerr=errs(test), fmt="o-", capsize=4, label="test")
    ax.errorbar(xs, [train[k].mean for k in names], yerr=errs(train), fmt="s--", capsize=4, alpha=0.6,
                label="train")
    ax.axhline(chance.mean, color="gray", lw=1.0, ls=":", label=f"chance (majority class) {chance.mean:.3f}")
    ax.set_xticks(xs, [f"{k} ({types[k]})" if k in types else k for k in names], rotation=45, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer (depth order)")
    ax.set_ylabel("linear probe accuracy (fraction)")
    ax.set_title(f"Linear probe: {run.spec.name}" + (f" (mean and 95% interval over {n} seeds)" if n > 1 else ""),
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    run.save_figure(fig, "accuracy_vs_depth.png")


def _report(run: RunContext, names: list[str], test: dict[str, Interval], train: dict[str, Interval],
            chance: Interval, fits: dict[str, dict[str, Any]] | None,
            converged: dict[str, bool] | None = None) -> None:
    """The report section: the table, findings that compare intervals, and baseline warnings."""
    several = max(iv.n for iv in test.values()) > 1
    head = "| layer | test accuracy | train accuracy |" + (" C | L-BFGS iterations | converged |" if fits else "")
    lines = [head, "|---|---|---|" + ("---|---|---|" if fits else "")]
    for k in names:
        cells = f"| `{k}` | {test[k].format()} | {train[k].format()} |"
        if fits:
            f = fits[k]
            cells += f" {f['C']:g} | {f['iterations']} | {'yes' if f['converged'] else 'no'} |"
        lines.append(cells)
    ranked = sorted(names, key=lambda k: test[k].mean, reverse=True)
    best = ranked[0]
    findings = [f"Best layer `{best}`: {test[best].format()}; chance (majority class of the test set) "
                f"{chance.mean:.4f}."]
    if len(ranked) > 1:
        findings.append("- " + compare(test[best], test[ranked[1]], a_name=f"`{best}`",
                                       b_name=f"`{ranked[1]}` (second best)").text)
    if len(names) > 1 and names[-1] not in (best, ranked[1]):
        findings.append("- " + compare(test[best], test[names[-1]], a_name=f"`{best}`",
                                       b_name=f"`{names[-1]}` (last probed)").text)
    if len(names) > 1 and names[0] not in (best, ranked[1]):
        findings.append("- " + compare(test[best], test[names[0]], a_name=f"`{best}`",
                                       b_name=f"`{names[0]}` (first probed)").text)
    for k in names:
        msg = baseline_warning(f"linear probe test accuracy at `{k}`", test[k], chance,
                               baseline_name="chance accuracy (majority class)")
        if msg:
            run.warn(msg)
    if converged is not None:
        for k, ok in converged.items():
            if not ok:
                run.warn(f"linear probe at `{k}` did not converge for every seed; raise probe.max_iter")
    what = ("mean ± half-width of the 95 % interval over seeds" if several
            else "one seed: run with `seeds: [0, 1, 2]` for intervals")
    run.add_report("Linear probe", "\n".join(
        lines + ["", f"Accuracy: {what}.", ""] + findings
        + ["", "![accuracy vs depth](figures/accuracy_vs_depth.png)"]))
