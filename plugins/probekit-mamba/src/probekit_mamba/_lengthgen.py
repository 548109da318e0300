"""The `length-generalization` probe: image reconstruction from L random patches.

The study's task (experiments.md, section 3): each image becomes a sequence of L patch
tokens at random positions, a delimiter and Q query tokens; a causal sequence model
predicts the patches at the query positions (MSE). Models are trained with one L per
batch drawn from `train_lengths = [a, b]` and evaluated at lengths across and beyond
that range. The token layout is documented in `probekit_mamba._seqmodels`.

Outputs: `results.csv` (`variant,length,mse`), `figures/error_vs_length.png`,
`figures/prefix_reconstructions.png` and the headline numbers in `metrics.json`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from probekit import Probe, RunContext, RunError, Trainer, epoch_seed
from probekit_mamba._lengthgen_options import LengthGenOptions
from probekit_mamba._seqmodels import (
    SequenceModel,
    build_sequence_model,
    centres,
    count_parameters,
    extract_patches,
    grid_positions,
    paste_patches,
    patch_mse,
    sample_positions,
)

TRAIN_TAG = "length-generalization"  # one tag for every variant: they see identical batches


class LengthGeneralizationProbe(Probe):
    """Trains each variant on lengths `[a, b]`; measures reconstruction MSE per context length."""

    needs_model = False

    def __init__(self, **options: Any):
        self.options = LengthGenOptions(**options)
        self.models: dict[str, SequenceModel] = {}
        self.losses: dict[str, list[float]] = {}
        self._images: dict[str, torch.Tensor] = {}

    # -- data ----------------------------------------------------------------------------
    def images(self, run: RunContext, split: str) -> torch.Tensor:
        """All images of a split as one (N, C, S, S) tensor in [0, 1]."""
        if split not in self._images:
            if run.data is None:
                raise RunError("the length-generalization probe needs a `data:` section, e.g. "
                               "`data: {type: mnist5k, size: 32}`")
            dataset = run.data.train if split == "train" else run.data.test
            chunks = [images for images, _ in run.loader(dataset, batch_size=512)]
            if not chunks:
                raise RunError(f"the {split} split of the data is empty")
            images = torch.cat(chunks).float()
            _, _, h, w = images.shape
            p = self.options.patch_size
            if h != w:
                raise RunError(f"the length-generalization probe needs square images, got {h}x{w}; "
                               f"set `data.size` (e.g. size: 32) to resize them")
            if h < p:
                raise RunError(f"images of {h}x{w} pixels are smaller than patch_size {p}; "
                               f"lower patch_size or set a larger `data.size`")
            self._images[split] = images
        return self._images[split]

    def _build(self, run: RunContext, variant: str, channels: int) -> SequenceModel:
        o = self.options
        # the same initial weights for a variant whatever else the spec asks for
        torch.manual_seed(epoch_seed(run.seed, 0, f"init {variant}"))
        model = build_sequence_model(variant, channels=channels, patch=o.patch_size, d_model=o.d_model,
                                     n_layers=o.n_layers, state_size=o.state_size, expand=o.expand,
                                     use_conv=o.use_conv, dt_scaling=o.dt_scaling,
                                     heads=o.transformer_heads, backend=o.backend)
        return model.to(run.device)

    def _steps(self, n_images: int, batch_size: int) -> int:
        return self.options.steps_per_epoch or max(1, n_images // batch_size)

    def dry_run(self, run: RunContext) -> dict[str, Any]:
        o = self.options
        n = len(run.data.train) if run.data is not None else 0
        steps: int | str = (self._steps(n, o.batch_size) if isinstance(o.batch_size, int)
                             else o.steps_per_epoch or "training images // the batch size found")
        return {"variants": list(o.variants), "epochs": o.epochs, "steps_per_epoch": steps,
                "train_lengths": list(o.train_lengths), "eval_lengths": o.resolved_eval_lengths(),
                "prefix_lengths": o.resolved_prefix_lengths()}

    # -- training --------------------------------------------------------------------------
    @contextmanager
    def _threads(self) -> Iterator[None]:
        before = torch.get_num_threads()
        if self.options.threads is not None:
            torch.set_num_threads(self.options.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def fit(self, run: RunContext) -> None:
        with self._threads():
            self._fit(run)

    def evaluate(self, run: RunContext) -> dict[str, Any]:
        with self._threads():
            return self._evaluate(run)

    def _fit(self, run: RunContext) -> None:
        o = self.options
        images = self.images(run, "train")
        n, channels, side, _ = images.shape
        a, b = o.train_lengths
        p, q = o.patch_size, o.queries
        bs = self._batch_size(run, images)
        steps = self._steps(n, bs)
        device = run.device

        def batches(g: torch.Generator) -> Any:
            order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(steps * bs / n))])
            for s in range(steps):
                length = int(torch.randint(a, b + 1, (), generator=g))
                idx = order[s * bs:(s + 1) * bs]
                yield (idx, sample_positions(len(idx), length, side, p, g),
                       sample_positions(len(idx), q, side, p, g))

        for variant in o.variants:
            model = self._build(run, variant, channels)
            params = [t for t in model.parameters() if t.requires_grad]
            optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
            safe = variant.replace("/", "_")

            def step(batch: Any, model: SequenceModel = model) -> torch.Tensor:
                idx, ctx, qry = batch
                imgs = images[idx]
                pred = model(extract_patches(imgs, ctx, p).to(device), centres(ctx, p, side).to(device),
                             centres(qry, p, side).to(device))
                return patch_mse(pred, extract_patches(imgs, qry, p).to(device))

            trainer = Trainer({"model": model}, optimizer, epochs=o.epochs, seed=run.seed, tag=TRAIN_TAG,
                              checkpoint=run.checkpoint_dir / f"lengthgen-{safe}.pt", progress=run.progress,
                              log=lambda m, v=variant: run.debug(f"[{v}] {m}"))
            if trainer.epoch:
                run.log(f"length-generalization: {variant} resumed after epoch {trainer.epoch}/{o.epochs}")
            self.losses[variant] = trainer.fit(batches, step, total=steps)
            run.log(f"length-generalization: {variant} ({count_parameters(model)} parameters) trained, "
                    f"final loss {self.losses[variant][-1]:.5f}")
            model.eval()
            self.models[variant] = model

    def _batch_size(self, run: RunContext, images: torch.Tensor) -> int:
        """`batch_size`, or with `auto` the largest batch at which every variant trains at the longest
        training length (one size for all variants: they see identical batches); kept for --resume."""
        from probekit import resolve_batch_size

        o = self.options
        if o.batch_size != "auto":
            return o.batch_size
        n, channels, side, _ = images.shape
        p, longest, device = o.patch_size, o.train_lengths[1], run.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            models = [self._build(run, variant, channels) for variant in o.variants]

        def loss(model: SequenceModel) -> Any:
            def on_first(b: int) -> torch.Tensor:  # the step of _fit on the first b images
                g = torch.Generator().manual_seed(0)
                ctx, qry = sample_positions(b, longest, side, p, g), sample_positions(b, o.queries, side, p, g)
                imgs = images[:b]
                pred = model(extract_patches(imgs, ctx, p).to(device), centres(ctx, p, side).to(device),
                             centres(qry, p, side).to(device))
                return patch_mse(pred, extract_patches(imgs, qry, p).to(device))
            return on_first

        return resolve_batch_size(run, TRAIN_TAG, "auto", [loss(m) for m in models], modules=models, maximum=n)

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: SequenceModel, images: torch.Tensor, ctx: torch.Tensor, qry: torch.Tensor,
                device: Any, batch_size: int) -> torch.Tensor:
        """Predicted patches (N, Q, C, p, p) for images with context / query corners ctx, qry."""
        p = self.options.patch_size
        side = images.shape[-1]
        out = []
        for i in range(0, len(images), batch_size):
            imgs, c, qq = images[i:i + batch_size], ctx[i:i + batch_size], qry[i:i + batch_size]
            out.append(model(extract_patches(imgs, c, p).to(device), centres(c, p, side).to(device),
                             centres(qq, p, side).to(device)).cpu())
        return torch.cat(out)

    def eval_set(self, run: RunContext, images: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Context and query corners for evaluation at `length`.

        Paired across lengths and variants: every image has one random sequence of context
        positions and one set of queries; length L uses the first L positions. So the MSE at two
        lengths differs only by the extra patches seen, not by a new random draw.
        """
        longest = max([*self.options.resolved_eval_lengths(), length])
        g = torch.Generator().manual_seed(epoch_seed(run.seed, 0, "length-generalization eval"))
        side = images.shape[-1]
        p = self.options.patch_size
        ctx = sample_positions(len(images), longest, side, p, g)
        qry = sample_positions(len(images), self.options.queries, side, p, g)
        return ctx[:, :length], qry

    def _evaluate(self, run: RunContext) -> dict[str, Any]:
        o = self.options
        test = self.images(run, "test")[:o.eval_images]
        a, b = o.train_lengths
        lengths = o.resolved_eval_lengths()
        mse: dict[str, dict[int, float]] = {v: {} for v in self.models}
        # reference: predict every query patch by the mean training image there (uses no context)
        mean_image = self.images(run, "train").mean(0, keepdim=True).expand_as(test)
        baseline: list[float] = []
        rows = []
        for length in run.progress(lengths, desc="length-generalization eval (lengths)"):
            ctx, qry = self.eval_set(run, test, length)
            target = extract_patches(test, qry, o.patch_size)
            baseline.append(float(patch_mse(extract_patches(mean_image, qry, o.patch_size), target)))
            for variant, model in self.models.items():
                pred = self.predict(model, test, ctx, qry, run.device, o.eval_batch_size)
                mse[variant][length] = float(patch_mse(pred, target))
            run.debug("length-generalization eval L=" + str(length) + ": "
                      + ", ".join(f"{v} {mse[v][length]:.5f}" for v in self.models))
        for variant in self.models:
            for length in lengths:
                rows.append({"variant": variant, "length": length, "mse": mse[variant][length]})
        run.write_csv("results.csv", rows, ["variant", "length", "mse"])

        inside = [n for n in lengths if a <= n <= b]
        beyond = [n for n in lengths if n > b]
        results: dict[str, Any] = {
            "train_lengths": [a, b],
            "mse_train_range": {v: _mean([mse[v][n] for n in inside]) for v in mse},
            "mse_beyond": {v: _mean([mse[v][n] for n in beyond]) for v in mse},
            "mse_at_longest_train": {v: mse[v][b] for v in mse},
            "mse_at_longest_eval": {v: mse[v][lengths[-1]] for v in mse},
            "params": {v: count_parameters(m) for v, m in self.models.items()},
            "final_train_loss": {v: self.losses[v][-1] for v in self.losses},
            "mse_mean_image_baseline": _mean(baseline),
        }
        checks: dict[str, bool] = {}
        if "mamba" in mse and beyond:
            checks["mamba_beyond_worse_than_longest_train"] = bool(
                min(mse["mamba"][n] for n in beyond) > mse["mamba"][b])
        if "mamba" in mse and "mamba-length-adaptive" in mse:
            checks["adaptive_better_in_train_range"] = bool(
                results["mse_train_range"]["mamba-length-adaptive"] < results["mse_train_range"]["mamba"])
        results["findings"] = checks

        self._plot_error(run, mse, lengths, results["mse_mean_image_baseline"])
        recon_mse = self._plot_prefixes(run, test)
        results["prefix_mse_example_image"] = recon_mse
        self._report(run, results, mse, lengths)
        return results

    # -- figures and report ---------------------------------------------------------------------
    def _plot_error(self, run: RunContext, mse: dict[str, dict[int, float]], lengths: list[int],
                    baseline: float | None) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        a, b = self.options.train_lengths
        fig, ax = plt.subplots(figsize=(6.0, 3.8))
        ax.axvspan(a, b, color="tab:green", alpha=0.12, label=f"training lengths [{a}, {b}]")
        for variant in mse:
            ax.plot(lengths, [mse[variant][n] for n in lengths], "o-", ms=4, label=variant)
        if baseline is not None:
            ax.axhline(baseline, color="gray", ls="--", lw=1, label="mean training image (no context)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length L (patches seen)")
        ax.set_ylabel("MSE on query patches")
        ax.set_title("Reconstruction error vs context length")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        run.save_figure(fig, "error_vs_length.png")

    def _plot_prefixes(self, run: RunContext, test: torch.Tensor) -> dict[str, dict[str, float]]:
        """Rows: patches seen, then each variant's reconstruction; columns: prefix lengths, original."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        o = self.options
        p, q = o.patch_size, o.queries
        prefixes = o.resolved_prefix_lengths()
        image = test[:1]
        side = image.shape[-1]
        g = torch.Generator().manual_seed(epoch_seed(run.seed, 0, "length-generalization prefixes"))
        ctx_all = sample_positions(1, max(prefixes), side, p, g)
        grid = grid_positions(side, p)
        # the grid's tiles are queried in chunks of at most Q, as in training
        chunks = [grid[i:i + q] for i in range(0, len(grid), q)]
        recon_mse: dict[str, dict[str, float]] = {v: {} for v in self.models}
        recons: dict[str, list[torch.Tensor]] = {v: [] for v in self.models}
        seen = []
        for n in run.progress(prefixes, desc="prefix reconstructions"):
            ctx = ctx_all[:, :n]
            seen_img, _ = paste_patches(extract_patches(image, ctx, p)[0], ctx[0], side)
            seen.append(seen_img)
            for variant, model in self.models.items():
                preds = [self.predict(model, image, ctx, c[None], run.device, 1)[0] for c in chunks]
                rec, _ = paste_patches(torch.cat(preds), grid, side)
                rec = rec.clamp(0, 1)
                recons[variant].append(rec)
                recon_mse[variant][str(n)] = float(((rec - image[0]) ** 2).mean())

        rows = 1 + len(self.models)
        cols = len(prefixes) + 1
        fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols + 1.2, 1.4 * rows + 0.4), squeeze=False)

        def show(ax: Any, img: torch.Tensor) -> None:
            arr = img.permute(1, 2, 0).numpy()
            ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])

        labels = ["patches seen", *self.models]
        for j, n in enumerate(prefixes):
            show(axes[0, j], seen[j])
            axes[0, j].set_title(f"L = {n}", fontsize=8)
            for i, variant in enumerate(self.models, start=1):
                show(axes[i, j], recons[variant][j])
                axes[i, j].set_xlabel(f"{recon_mse[variant][str(n)]:.4f}", fontsize=7)
        show(axes[0, -1], image[0])
        axes[0, -1].set_title("original", fontsize=8)
        for i in range(1, rows):
            axes[i, -1].axis("off")
        for i, label in enumerate(labels):
            axes[i, 0].set_ylabel(label, fontsize=8)
        a, b = o.train_lengths
        fig.suptitle(f"Reconstruction after each prefix length (trained on L in [{a}, {b}]); "
                     f"numbers: image MSE", fontsize=9)
        run.save_figure(fig, "prefix_reconstructions.png")
        return recon_mse

    def _report(self, run: RunContext, results: dict[str, Any], mse: dict[str, dict[int, float]],
                lengths: list[int]) -> None:
        a, b = self.options.train_lengths
        head = "| variant | params | " + " | ".join(
            f"L={n}{'*' if a <= n <= b else ''}" for n in lengths) + " | mean in [a, b] | mean beyond b |"
        lines = [head, "|---" * (len(lengths) + 4) + "|"]
        for v in mse:
            lines.append(f"| {v} | {results['params'][v]} | "
                         + " | ".join(f"{mse[v][n]:.4f}" for n in lengths)
                         + f" | {results['mse_train_range'][v]:.4f} | {_fmt(results['mse_beyond'][v])} |")
        findings = results["findings"]
        lines += ["", f"MSE on query patches; `*` marks training lengths [{a}, {b}]. Predicting the mean "
                      f"training image (no context): {_fmt(results['mse_mean_image_baseline'])}. Optimiser: "
                      f"Adam (the study used Lamb, which torch does not ship)."]
        if findings:
            lines += [""] + [f"- {k.replace('_', ' ')}: **{'yes' if v else 'no'}**"
                             for k, v in findings.items()]
        lines += ["", "![error vs length](figures/error_vs_length.png)", "",
                  "![prefix reconstructions](figures/prefix_reconstructions.png)"]
        run.add_report("Length generalisation", "\n".join(lines))


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
