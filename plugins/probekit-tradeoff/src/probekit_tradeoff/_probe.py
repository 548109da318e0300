"""The `tradeoff` probe: sweeps of (family, latent size, lambda), each point trained on its own."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from probekit import (
    CorruptCheckpointError,
    Probe,
    RunContext,
    RunError,
    SeedResults,
    SpecError,
    Trainer,
    all_gather,
    alone,
    batches_of,
    epoch_seed,
    group_size,
    load_safetensors,
    rank_batches,
    read_checked_json,
    resolve_batch_size,
    save_safetensors,
    spread,
    write_checked_json,
    write_json,
)
from probekit_tradeoff._models import TradeoffModel, build_model
from probekit_tradeoff._routing import routed_losses

COLUMNS = ["family", "latent", "lambda", "test_mse", "test_ce", "accuracy", "readout_accuracy"]
KEYS = ["family", "latent", "lambda"]  # what identifies a row of results.csv (the rest is combined over seeds)
DEFAULT_LAMBDAS = [0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]  # as TradeoffOptions


def point_name(family: str, latent: int, lam: float) -> str:
    """File stem of one sweep point (`repr` keeps distinct lambdas distinct, e.g. 0.999 vs 1.0)."""
    return f"tradeoff-{family}-L{latent}-lam{lam!r}"


@dataclass
class Split:
    """One split's images ([0, 1], NCHW, on the run's device) and labels."""

    images: torch.Tensor
    labels: torch.Tensor


class TradeoffProbe(Probe):
    """Trains encoder / decoder / classifier models with a routed `lambda * MSE + (1 - lambda) * CE`
    for every (family, latent, lambda) of the spec, plus PCA and random-projection baselines, and
    writes `results.csv`, `figures/pareto.png`, `figures/vs_lambda.png` and a report section.
    With `seeds:`, `summarize` draws the same figures and findings with 95 % intervals over seeds.

    Reconstruction MSE is measured in the decoder's pixel space, [-1, 1] (images in [0, 1] are mapped
    by `2 x - 1`, as in the study); it is 4 times the MSE in [0, 1] pixels.
    """

    needs_model = False

    def __init__(
        self,
        families: list[str] | None = None,
        latents: list[int] | None = None,
        lambdas: list[float] | None = None,
        epochs: int = 10,
        batch_size: int = 512,
        lr: float = 1e-3,
        latent_activation: str = "none",
        baselines: list[str] | None = None,
        baseline_iters: int = 200,
        encoder: dict[str, Any] | None = None,
        reconstructions: int = 8,
        distribute: str = "batches",
        grad_clip: float | None = None,
        keep: str = "last",
        val_fraction: float = 0.1,
    ):
        self.families = list(families or ["fc-medium"])
        self.latents = list(latents or [2, 4, 16, 64])
        self.lambdas = [float(x) for x in (lambdas if lambdas is not None else DEFAULT_LAMBDAS)]
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.batch_option = batch_size  # an int or "auto"; self.batch_size: the current point's
        self.latent_activation = latent_activation
        self.baseline_kinds = list(baselines if baselines is not None else ["pca", "random"])
        self.baseline_iters = baseline_iters
        self.encoder_spec = encoder
        self.n_recon = reconstructions
        self.distribute = distribute
        self.grad_clip, self.keep, self.val_fraction = grad_clip, keep, val_fraction
        self.rows: list[dict[str, Any]] = []
        self.baseline_rows: list[dict[str, Any]] = []
        self.recon: dict[str, list[list[float]]] = {}
        self.trivial_row: dict[str, Any] | None = None
        self._attached: Any = None

    # -- sweep --------------------------------------------------------------------------------
    def points(self) -> list[tuple[str, int, float]]:
        return [(f, L, lam) for f in self.families for L in self.latents for lam in self.lambdas]

    def dry_run(self, run: RunContext) -> dict[str, Any]:
        return {
            "points": [point_name(*p) for p in self.points()],
            "epochs": self.epochs,
            "baselines": [f"{k}-L{L}" for k in self.baseline_kinds for L in self.latents],
        }

    def fit(self, run: RunContext) -> None:
        if run.data is None:
            raise SpecError(
                "the tradeoff probe needs a `data:` section",
                path="data",
                fix="Add e.g. `data: {type: mnist5k}`.",
            )
        train, test = self._load(run, run.data.train), self._load(run, run.data.test)
        self.image_shape = tuple(train.images.shape[1:])
        self.example_idx = example_indices(test.labels.cpu(), self.n_recon)
        self.examples = test.images[self.example_idx.to(test.images.device)].cpu().numpy()
        self.num_classes = max(
            run.data.info.num_classes, int(train.labels.max()) + 1, int(test.labels.max()) + 1
        )
        if self.encoder_spec is not None:
            from probekit_tradeoff._attach import Attached

            self._attached = Attached.build(run, self.encoder_spec, train, test)
        points = self.points()
        run.log(
            f"tradeoff: {len(points)} sweep points ({', '.join(self.families)}; L = {self.latents}; "
            f"lambda = {self.lambdas}), {self.epochs} epochs each, batch {self.batch_option}"
        )
        self.rows = []
        if self.distribute == "points" and group_size() > 1:
            self.rows = self._spread_points(run, points, train, test)
        else:
            for i, (family, latent, lam) in enumerate(points):
                self.rows.append(self._point(run, family, latent, lam, train, test))
                self._log_point(run, i, len(points), self.rows[-1])
        self.trivial_row = trivial_baseline(train, test, self.num_classes)
        run.log(f"tradeoff trivial baseline: majority class accuracy {self.trivial_row['accuracy']:.4f}, "
                f"mean training image test MSE {self.trivial_row['test_mse']:.4f}")
        self.baseline_rows = []
        for kind in self.baseline_kinds:
            for latent in self.latents:
                row = self._baseline(run, kind, latent, train, test)
                self.baseline_rows.append(row)
                run.log(
                    f"tradeoff baseline {kind} L={latent}: accuracy {row['accuracy']:.4f}, "
                    f"test MSE {row['test_mse']:.4f}"
                )

    def _log_point(self, run: RunContext, i: int, n: int, row: dict[str, Any]) -> None:
        kept = (f" (weights of epoch {row['best_epoch']}, the lowest validation loss)"
                if row.get("best_epoch") is not None else "")
        run.log(
            f"tradeoff [{i + 1}/{n}] {row['family']} L={row['latent']} lambda={row['lambda']:g}: accuracy "
            f"{row['accuracy']:.4f}, test MSE {row['test_mse']:.4f}, test CE {row['test_ce']:.4f}{kept}"
        )

    def _spread_points(self, run: RunContext, points: list[tuple[str, int, float]], train: Split,
                       test: Split) -> list[dict[str, Any]]:
        """Each process trains its own sweep points alone (checkpointing them itself); all get all rows."""
        mine = {}
        with alone(writable=run.checkpoint_dir):
            for i, (family, latent, lam) in spread(points):
                row = self._point(run, family, latent, lam, train, test)
                mine[i] = (row, self.recon[point_name(family, latent, lam)])
                self._log_point(run, i, len(points), row)
        done = {i: v for part in all_gather(mine) for i, v in part.items()}
        rows = []
        for i, (family, latent, lam) in enumerate(points):
            row, self.recon[point_name(family, latent, lam)] = done[i]
            if i not in mine:
                self._log_point(run, i, len(points), row)
            rows.append(row)
        return rows

    # -- data ---------------------------------------------------------------------------------------
    def _load(self, run: RunContext, dataset: Any) -> Split:
        images, labels = [], []
        for x, y in run.loader(dataset, batch_size=1024):
            images.append(x.float())
            labels.append(torch.as_tensor(y).long())
        if not images:
            raise SpecError("the dataset split is empty", path="data", fix="Check data.limit / test_limit.")
        x = torch.cat(images)
        if x.dim() != 4:
            raise SpecError(
                f"the tradeoff probe needs image data (N, C, H, W); got shape {tuple(x.shape)}",
                path="data.type",
                fix="Use an image dataset such as mnist5k, digits or torchvision.",
            )
        return Split(x.to(run.device), torch.cat(labels).to(run.device))

    # -- one point ----------------------------------------------------------------------------------
    def _build(self, run: RunContext, family: str, latent: int) -> TradeoffModel:
        in_shape = self._attached.in_shape if self._attached is not None else self.image_shape
        # the same initial weights for every lambda of a (family, latent): a paired comparison
        torch.manual_seed(epoch_seed(run.seed, 0, f"tradeoff-init {family} L{latent}"))
        try:
            model = build_model(
                family,
                latent,
                in_shape=in_shape,
                image_shape=self.image_shape,
                num_classes=self.num_classes,
                activation=self.latent_activation,
            )
        except ValueError as exc:
            raise SpecError(
                str(exc), path="probe.families", fix="Choose a family that fits the input."
            ) from None
        return model.to(run.device)

    def _point(
        self, run: RunContext, family: str, latent: int, lam: float, train: Split, test: Split
    ) -> dict[str, Any]:
        stem = point_name(family, latent, lam)
        result_path = run.checkpoint_dir / f"{stem}.json"
        train_ckpt = run.checkpoint_dir / f"{stem}.pt"
        weights_path = run.checkpoint_dir / f"{stem}.safetensors"
        config = self._config(family, latent, lam)
        saved = self._finished_point(run, result_path, weights_path, config)
        if saved is not None:
            train_ckpt.unlink(missing_ok=True)  # left over from a kill between the two writes below
            self.recon[stem] = saved.get("reconstructions", [])
            return {k: saved[k] for k in [*COLUMNS, "best_epoch"] if k in saved}
        model = self._build(run, family, latent)
        modules: dict[str, torch.nn.Module] = {"model": model}
        params = list(model.parameters())
        attached = self._attached
        if attached is not None and attached.trainable:
            attached.reset()
            modules["backbone"] = attached.adapter.model
            params += [p for p in attached.adapter.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        inputs, encode = self._inputs(train, "train", model)
        fit_rows, val_rows = self._fit_rows(run, len(train.labels))
        n = len(fit_rows)

        def loss_of(rows: torch.Tensor) -> torch.Tensor:
            rows = rows.to(train.images.device)
            target = train.images[rows] * 2 - 1
            return routed_losses(model, inputs(rows), target, train.labels[rows], lam, encode=encode).loss

        def step(idx: torch.Tensor) -> torch.Tensor:  # idx: positions in fit_rows
            return loss_of(fit_rows[idx])

        def validate() -> float:  # the training loss on the held-out rows (the trainer sets eval mode)
            assert val_rows is not None
            total = 0.0
            for part in batches_of(len(val_rows), 1024):
                total += float(loss_of(val_rows[part])) * len(part)
            return total / len(val_rows)

        trainer = Trainer(
            modules,
            optimizer,
            epochs=self.epochs,
            checkpoint=train_ckpt,
            seed=run.seed,
            tag=f"tradeoff {family} L{latent}",
            progress=run.progress,
            log=lambda m: run.debug(f"[lambda={lam:g}] {m}"),
            grad_clip=self.grad_clip,
            validate=validate if val_rows is not None else None,
        )

        # batch_size auto: the largest batch that fits, searched once per (family, latent) (every lambda
        # then trains with the same size) and kept in checkpoints/ for --resume
        self.batch_size = resolve_batch_size(run, f"tradeoff {family} L{latent}", self.batch_option,
                                             lambda b: step(torch.arange(b)), modules=modules.values(),
                                             maximum=n)
        losses = trainer.fit(
            lambda g: rank_batches(n, self.batch_size, g), step, total=math.ceil(n / self.batch_size), sharded=True
        )
        best_epoch = trainer.restore_best() if val_rows is not None else None
        metrics, recon = self._evaluate_model(model, test, lam)
        row = {"family": family, "latent": latent, "lambda": lam, **metrics,
               "readout_accuracy": self._readout_accuracy(model, train, test)}
        if best_epoch is not None:
            row["best_epoch"] = best_epoch
        # weights (without optimizer state) and results, both checksummed, then drop the training
        # checkpoint: a kill at any point leaves either the checkpoint or the finished point
        save_safetensors(model.state_dict(), weights_path)
        self.recon[stem] = recon
        write_checked_json(
            result_path, {**row, "config": config, "train_losses": losses, "val_losses": trainer.val_losses,
                          "reconstructions": recon}
        )
        train_ckpt.unlink(missing_ok=True)
        return row

    @staticmethod
    def _finished_point(run: RunContext, result_path: Path, weights_path: Path,
                        config: dict[str, Any]) -> dict[str, Any] | None:
        """The saved results of a point finished with these settings when they and its weights are
        whole; None when it must be trained (not yet, other settings, or a damaged file: logged)."""
        if not result_path.exists():
            return None
        try:
            saved = read_checked_json(result_path)
            if saved.get("config") != config:
                run.log(f"tradeoff: {result_path.name} was written with other settings; training again")
                result_path.unlink()
                return None
            load_safetensors(weights_path)  # checked only: the results do not need them, their users do
        except CorruptCheckpointError as exc:
            run.log(f"tradeoff: {exc}; training the point again")
            return None
        except FileNotFoundError:
            run.log(f"tradeoff: {weights_path.name} is missing; training the point again")
            return None
        return saved

    def _config(self, family: str, latent: int, lam: float) -> dict[str, Any]:
        return {
            "family": family,
            "latent": latent,
            "lambda": lam,
            "epochs": self.epochs,
            "batch_size": self.batch_option,
            "lr": self.lr,
            "latent_activation": self.latent_activation,
            "grad_clip": self.grad_clip,
            "keep": self.keep,
            "val_fraction": self.val_fraction if self.keep == "best" else None,
            "encoder": None
            if self.encoder_spec is None
            else json.loads(json.dumps(self.encoder_spec, default=str)),
        }

    def _fit_rows(self, run: RunContext, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training rows every sweep point trains on and, with `keep: best`, the validation rows held
        out from them (`val_fraction`, the same for every point of a seed: a paired comparison)."""
        if self.keep != "best":
            return torch.arange(n), None
        n_val = max(1, round(n * self.val_fraction))
        if n_val >= n:
            raise SpecError(f"val_fraction {self.val_fraction} of {n} training images leaves none to train on",
                            path="probe.val_fraction", fix="Lower val_fraction or use more training data.")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(run.seed, 0, "tradeoff val")))
        return perm[n_val:].sort().values, perm[:n_val].sort().values

    def _inputs(
        self, split: Split, name: str, model: TradeoffModel
    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor] | None]:
        """`inputs(idx)` -> the encoder's input for a batch, and the `encode` function to use."""
        if self._attached is None:
            return (lambda idx: split.images[idx] * 2 - 1), None
        return self._attached.inputs(split, name, model)

    @torch.no_grad()
    def _evaluate_model(
        self, model: TradeoffModel, test: Split, lam: float
    ) -> tuple[dict[str, float], list[list[float]]]:
        model.eval()
        if self._attached is not None:
            self._attached.eval()
        inputs, encode = self._inputs(test, "test", model)
        sq, ce, correct, n = 0.0, 0.0, 0, 0
        for idx in batches_of(len(test.labels), 1024):
            idx = idx.to(test.images.device)
            target = test.images[idx] * 2 - 1
            out = routed_losses(model, inputs(idx), target, test.labels[idx], lam, encode=encode)
            sq += float(out.mse) * target.numel()
            ce += float(out.ce) * len(idx)
            correct += int((out.logits.argmax(1) == test.labels[idx]).sum())
            n += len(idx)
        k = len(self.example_idx)
        recon: list[list[float]] = []
        if k:
            idx = self.example_idx.to(test.images.device)
            out = routed_losses(
                model, inputs(idx), test.images[idx] * 2 - 1, test.labels[idx], lam, encode=encode
            )
            recon = [[round(float(v), 4) for v in r.flatten()] for r in ((out.recon + 1) / 2).cpu()]
        numel = n * math.prod(self.image_shape)
        return {"test_mse": sq / numel, "test_ce": ce / n, "accuracy": correct / n}, recon

    @torch.no_grad()
    def _codes(self, model: TradeoffModel, split: Split, name: str) -> torch.Tensor:
        inputs, encode = self._inputs(split, name, model)
        chunks = []
        for idx in batches_of(len(split.labels), 1024):
            x = inputs(idx.to(split.images.device))
            z = encode(x) if encode is not None else model.encoder(x)
            chunks.append(z.flatten(1).float().cpu())  # vit-tiny's latent: every token
        return torch.cat(chunks)

    def _readout_accuracy(self, model: TradeoffModel, train: Split, test: Split) -> float:
        """Test accuracy of a logistic regression fitted afterwards on the frozen, trained latent.

        The jointly trained classifier must follow a latent that moves under it (at lambda = 1 it
        never shapes it); this read-out measures how much class information the final latent holds.
        """
        from probekit_tradeoff._baselines import logistic_regression

        model.eval()
        accuracy, _ = logistic_regression(self._codes(model, train, "train"), train.labels.cpu(),
                                          self._codes(model, test, "test"), test.labels.cpu(),
                                          self.num_classes, self.baseline_iters)
        return accuracy

    # -- baselines ------------------------------------------------------------------------------
    def _baseline(self, run: RunContext, kind: str, latent: int, train: Split, test: Split) -> dict[str, Any]:
        from probekit_tradeoff._baselines import baseline

        path = run.checkpoint_dir / f"tradeoff-{kind}-L{latent}.json"
        config = {"kind": kind, "latent": latent, "iters": self.baseline_iters, "seed": run.seed}
        if path.exists():
            try:
                saved = read_checked_json(path)
            except CorruptCheckpointError as exc:
                run.log(f"tradeoff baseline {kind} L={latent}: {exc}; computing it again")
                saved = {}
            if saved.get("config") == config:
                return {k: saved.get(k) for k in COLUMNS}
        row = baseline(
            kind,
            latent,
            (train.images * 2 - 1).flatten(1).cpu(),
            train.labels.cpu(),
            (test.images * 2 - 1).flatten(1).cpu(),
            test.labels.cpu(),
            self.num_classes,
            seed=epoch_seed(run.seed, 0, f"tradeoff-random L{latent}"),
            max_iter=self.baseline_iters,
        )
        if row["components"] < latent:
            run.log(
                f"tradeoff baseline {kind} L={latent}: only {row['components']} components exist "
                f"(the images have {row['components']} pixels)"
            )
        write_checked_json(path, {**row, "config": config})
        return {k: row.get(k) for k in COLUMNS}

    # -- results ------------------------------------------------------------------------------------
    def evaluate(self, run: RunContext) -> dict[str, Any]:
        if not self.rows:
            raise RunError("tradeoff: nothing was trained (fit did not run)")
        from probekit_tradeoff._report import Curves, reconstructions

        rows = self.rows + self.baseline_rows + ([self.trivial_row] if self.trivial_row else [])
        run.write_csv("results.csv", rows, COLUMNS, keys=KEYS)
        if self.recon and len(self.example_idx):
            family = self.families[0]
            recon = {(L, lam): self.recon.get(point_name(family, L, lam)) for L in self.latents for lam in self.lambdas}
            reconstructions(run, self.examples, recon, family, self.latents, self.lambdas, run.seed)
        results = self._summarize(run, Curves.from_rows([{**r, "seed": run.seed} for r in rows]))
        if self.keep == "best":  # the epoch whose weights each sweep point kept
            results["best_epoch"] = {f"{r['family']} L{r['latent']} lambda={r['lambda']:g}": r["best_epoch"]
                                     for r in self.rows}
        return results

    def summarize(self, run: RunContext, results: SeedResults) -> None:
        """With `seeds:`: the figures, findings and report from `results.csv` combined over the seeds
        (95 % intervals); `reconstructions.png` is the first seed's."""
        import shutil

        from probekit_tradeoff._report import Curves

        curves = Curves.from_rows(results.table("results.csv").rows)
        first = results.run_dir / "seeds" / str(results.seeds[0]) / "figures" / "reconstructions.png"
        if first.exists():
            run.figures_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(first, run.figures_dir / "reconstructions.png")
        self._summarize(run, curves)

    def _summarize(self, run: RunContext, curves: Any) -> dict[str, Any]:
        """Figures, warnings, report section and summary.json (curves with intervals, findings);
        returns the plain numbers for metrics.json."""
        from probekit_tradeoff._report import figures, findings, report_section, summary, warnings_for

        figures(run, curves, run.spec.name)
        found = findings(curves)
        write_json(run.path("summary.json"), {"seeds": curves.seeds, **summary(curves, intervals=True),
                                              "findings": found})
        for w in warnings_for(curves):
            run.warn(w)
        has_recon = (run.figures_dir / "reconstructions.png").exists()
        run.add_report("Classification vs reconstruction tradeoff",
                       report_section(curves, found, has_reconstructions=has_recon))
        return summary(curves, intervals=False)


def trivial_baseline(train: Split, test: Split, num_classes: int) -> dict[str, Any]:
    """The trivial baselines, as one row of results.csv (family `trivial`): the test accuracy of always
    answering the training set's most frequent class, the test cross-entropy of predicting the training
    class frequencies, and the test MSE of the mean training image (pixels in [-1, 1])."""
    counts = torch.bincount(train.labels.cpu(), minlength=num_classes).double()
    freq = counts / counts.sum()
    labels = test.labels.cpu()
    accuracy = float((labels == int(counts.argmax())).double().mean())
    ce = float(-freq.clamp_min(1e-12).log()[labels].mean())
    mean = (train.images * 2 - 1).double().mean(0)
    mse = float((((test.images * 2 - 1).double() - mean) ** 2).mean())
    return {"family": "trivial", "latent": None, "lambda": None, "test_mse": mse, "test_ce": ce,
            "accuracy": accuracy, "readout_accuracy": None}


def example_indices(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Up to `n` test indices for the reconstruction figure: the first example of each class in turn
    (test splits are often sorted by class), then the next unused ones."""
    picks: list[int] = []
    for c in torch.unique(labels).tolist():
        if len(picks) < n:
            picks.append(int((labels == c).nonzero()[0]))
    rest = [i for i in range(len(labels)) if i not in set(picks)]
    return torch.tensor(sorted(picks) + rest[: n - len(picks)], dtype=torch.long)


def load_point_weights(run_dir: str | Path, family: str, latent: int, lam: float) -> dict[str, torch.Tensor]:
    """The trained weights of one finished sweep point of a run directory (checksum checked: a damaged
    file raises `CorruptCheckpointError` naming it)."""
    return load_safetensors(Path(run_dir) / "checkpoints" / f"{point_name(family, latent, lam)}.safetensors")
