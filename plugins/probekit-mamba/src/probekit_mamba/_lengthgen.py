"""The `length-generalization` probe: image reconstruction from L random patches.

The study's task (experiments.md, section 3): each image becomes a sequence of L patch
tokens at random positions, a delimiter and Q query tokens; a sequence model predicts the
patches at the query positions (MSE). Models are trained with one L per batch drawn from
`train_lengths = [a, b]` and evaluated at lengths across and beyond that range. The token
layout and the models are documented in `probekit_mamba._seqmodels`.

Outputs of a run: `results.csv` (`variant,length,mse`, with the mean-training-image baseline as
the variant `mean-training-image`), `figures/error_vs_length.png`,
`figures/prefix_reconstructions.png` and the headline numbers in `metrics.json`. With `seeds:`
the core combines the seed runs and `summarize` draws the curves with their 95 % intervals and
writes the findings, each a comparison of intervals with its effect size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from probekit import (
    Finding,
    Interval,
    Probe,
    RunContext,
    RunError,
    SeedResults,
    Trainer,
    compare,
    epoch_seed,
    num_examples,
)
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
BASELINE = "mean-training-image"  # the `variant` of the baseline rows of results.csv
FINAL_LR_FRACTION = 0.05  # the cosine schedule ends at lr / 20


def _tagged(log: Callable[[str], None], tag: str, message: str) -> None:
    """`log` the message with a `[tag]` in front."""
    log(f"[{tag}] {message}")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning rate of training step `step` (0-based) of `total`, as a fraction of `lr`: a linear
    warm-up over `warmup` steps, then constant or a cosine decay to `FINAL_LR_FRACTION` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * t))


class StudyAdam(torch.optim.Adam):
    """Adam with a per-step learning-rate schedule (the study's gradient-norm clipping is the `Trainer`'s
    `grad_clip`, applied before every step).

    `step` sets the learning rate of the step from `schedule(steps done)`. The number of steps done is
    read from Adam's own state, which the `Trainer` checkpoints, so a resumed run continues the schedule
    where it stopped.
    """

    def __init__(self, params: Any, *, lr: float, weight_decay: float, schedule: Any):
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        self.base_lr, self.schedule = lr, schedule

    def steps_done(self) -> int:
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "step" in state:
                    return int(state["step"])
        return 0

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        factor = self.schedule(self.steps_done())
        for group in self.param_groups:
            group["lr"] = self.base_lr * factor
        return super().step(closure)


class LengthGeneralizationProbe(Probe):
    """Trains each variant on lengths `[a, b]`; measures reconstruction MSE per context length."""

    needs_model = False

    def __init__(self, **options: Any):
        self.options = LengthGenOptions(**options)
        self.models: dict[str, SequenceModel] = {}
        self.losses: dict[str, list[float]] = {}
        self.best_epochs: dict[str, int] = {}  # with keep: best, the epoch whose weights each variant kept
        self.val_losses: dict[str, list[float]] = {}  # with keep: best, each variant's validation MSE per epoch
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

    def _build(self, run: RunContext, variant: str, channels: int, side: int) -> SequenceModel:
        o = self.options
        # the same initial weights for a variant whatever else the spec asks for
        torch.manual_seed(epoch_seed(run.seed, 0, f"init {variant}"))
        model = build_sequence_model(variant, channels=channels, patch=o.patch_size, d_model=o.d_model,
                                     n_layers=o.n_layers, state_size=o.state_size, expand=o.expand,
                                     use_conv=o.use_conv, dt_scaling=o.dt_scaling,
                                     heads=o.transformer_heads, layer_scale=o.transformer_layer_scale,
                                     side=side, output=o.output, backend=o.backend)
        return model.to(run.device)

    def _steps(self, n_images: int, batch_size: int) -> int:
        return self.options.steps_per_epoch or max(1, n_images // batch_size)

    def dry_run(self, run: RunContext) -> dict[str, Any]:
        o = self.options
        n = num_examples(run.data.train) if run.data is not None else 0
        steps: int | str = (self._steps(n, o.batch_size) if isinstance(o.batch_size, int)
                             else o.steps_per_epoch or "training images // the batch size found")
        return {"variants": list(o.variants), "epochs": o.epochs, "steps_per_epoch": steps,
                "schedule": f"{o.schedule}, warm-up {o.warmup_steps} steps, lr {o.lr}, clip {o.grad_clip}",
                "keep": o.keep,
                "train_lengths": list(o.train_lengths), "eval_lengths": o.resolved_eval_lengths(),
                "prefix_lengths": o.resolved_prefix_lengths()}

    # -- training --------------------------------------------------------------------------
    def fit(self, run: RunContext) -> None:
        self._fit(run)

    def evaluate(self, run: RunContext) -> dict[str, Any]:
        return self._evaluate(run)

    def _fit(self, run: RunContext) -> None:
        o = self.options
        images, validate_on = self._fit_split(run, self.images(run, "train"))
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
            model = self._build(run, variant, channels, side)
            params = [t for t in model.parameters() if t.requires_grad]
            total = o.epochs * steps
            def schedule(i: int, total: int = total) -> float:
                return lr_factor(i, total, o.warmup_steps, o.schedule)

            optimizer = StudyAdam(params, lr=o.lr, weight_decay=o.weight_decay, schedule=schedule)
            safe = variant.replace("/", "_")

            def step(batch: Any, model: SequenceModel = model) -> torch.Tensor:
                idx, ctx, qry = batch
                imgs = images[idx]
                pred = model(extract_patches(imgs, ctx, p).to(device), centres(ctx, p, side).to(device),
                             centres(qry, p, side).to(device))
                return patch_mse(pred, extract_patches(imgs, qry, p).to(device))

            trainer = Trainer({"model": model}, optimizer, epochs=o.epochs, seed=run.seed, tag=TRAIN_TAG,
                              checkpoint=run.checkpoint_dir / f"lengthgen-{safe}.pt", progress=run.progress,
                              log=partial(_tagged, run.debug, variant),
                              grad_clip=o.grad_clip,
                              validate=None if validate_on is None else partial(validate_on, model))
            if trainer.epoch:
                run.log(f"length-generalization: {variant} resumed after epoch {trainer.epoch}/{o.epochs}")
            self.losses[variant] = trainer.fit(batches, step, total=steps)
            kept = ""
            best = trainer.restore_best()  # with keep: best (else None: the last weights stay)
            if best is not None:
                self.best_epochs[variant], self.val_losses[variant] = best, list(trainer.val_losses)
                kept = (f"; kept the weights of epoch {best}, validation MSE "
                        f"{trainer.val_losses[best - 1]:.5f} (last epoch {trainer.val_losses[-1]:.5f})")
            run.log(f"length-generalization: {variant} ({count_parameters(model)} parameters) trained, "
                    f"final loss {self.losses[variant][-1]:.5f}{kept}")
            model.eval()
            self.models[variant] = model

    def _fit_split(self, run: RunContext, images: torch.Tensor
                   ) -> tuple[torch.Tensor, Callable[[SequenceModel], float] | None]:
        """The images trained on and, with `keep: best`, `validate(model) -> float`: the patch MSE on the
        held-out `val_fraction` of the training images, averaged over lengths a, the middle and b of
        `train_lengths`, with context and query positions drawn once (the same for every epoch and variant)."""
        o = self.options
        if o.keep != "best":
            return images, None
        n = len(images)
        n_val = max(1, round(n * o.val_fraction))
        if n_val >= n:
            raise RunError(f"probe.val_fraction {o.val_fraction} of {n} training images leaves none to train "
                           f"on; lower it or use more training data")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(
            epoch_seed(run.seed, 0, "length-generalization validation")))
        fit, val = images[perm[n_val:].sort().values], images[perm[:n_val].sort().values]
        a, b = o.train_lengths
        side, p = images.shape[-1], o.patch_size
        g = torch.Generator().manual_seed(epoch_seed(run.seed, 1, "length-generalization validation"))
        ctx = sample_positions(len(val), b, side, p, g)
        qry = sample_positions(len(val), o.queries, side, p, g)
        target = extract_patches(val, qry, p)
        lengths = sorted({a, (a + b) // 2, b})

        def validate(model: SequenceModel) -> float:
            return sum(float(patch_mse(self.predict(model, val, ctx[:, :length], qry, run.device,
                                                    o.eval_batch_size), target))
                       for length in lengths) / len(lengths)

        run.log(f"length-generalization: keeping each variant's epoch with the lowest MSE on {n_val} validation "
                f"images (lengths {lengths}); training on the other {n - n_val}")
        return fit, validate

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
            models = [self._build(run, variant, channels, side) for variant in o.variants]

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
        lengths differs only by the extra patches seen, not by a new random draw. The sequences derive
        from the data's seed (`run.data_seed`), so with `seeds:` every seed's models are scored on the
        same test sequences and the intervals measure the training's spread, not a new test draw.
        """
        longest = max([*self.options.resolved_eval_lengths(), length])
        g = torch.Generator().manual_seed(epoch_seed(run.data_seed, 0, "length-generalization eval"))
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
        # reference: predict every query patch by the mean training image there (uses no context). The
        # queries are the same at every length (see eval_set), so this is one number.
        mean_image = self.images(run, "train").mean(0, keepdim=True).expand_as(test)
        _, qry = self.eval_set(run, test, lengths[0])
        baseline = float(patch_mse(extract_patches(mean_image, qry, o.patch_size),
                                   extract_patches(test, qry, o.patch_size)))
        for length in run.progress(lengths, desc="length-generalization eval (lengths)"):
            ctx, qry = self.eval_set(run, test, length)
            target = extract_patches(test, qry, o.patch_size)
            for variant, model in self.models.items():
                pred = self.predict(model, test, ctx, qry, run.device, o.eval_batch_size)
                mse[variant][length] = float(patch_mse(pred, target))
            run.debug("length-generalization eval L=" + str(length) + ": "
                      + ", ".join(f"{v} {mse[v][length]:.5f}" for v in self.models))
        rows = [{"variant": v, "length": n, "mse": mse[v][n]} for v in self.models for n in lengths]
        rows += [{"variant": BASELINE, "length": n, "mse": baseline} for n in lengths]
        run.write_csv("results.csv", rows, ["variant", "length", "mse"], keys=["variant", "length"])

        inside = [n for n in lengths if a <= n <= b]
        beyond = [n for n in lengths if n > b]
        train_range = {v: _mean([mse[v][n] for n in inside]) for v in mse}
        results: dict[str, Any] = {
            "train_lengths": [a, b],
            "mse_train_range": train_range,
            "mse_beyond": {v: _mean([mse[v][n] for n in beyond]) for v in mse},
            "mse_at_longest_train": {v: mse[v][b] for v in mse},
            "mse_at_longest_eval": {v: mse[v][lengths[-1]] for v in mse},
            "rise_beyond": {v: mse[v][lengths[-1]] - mse[v][b] for v in mse},
            "ratio_to_baseline_train_range": {v: _ratio(train_range[v], baseline) for v in mse},
            "params": {v: count_parameters(m) for v, m in self.models.items()},
            "final_train_loss": {v: self.losses[v][-1] for v in self.losses},
            "mse_mean_image_baseline": baseline,
        }
        if self.best_epochs:  # keep: best
            results["best_epoch"] = dict(self.best_epochs)
        curves = {v: {n: Interval.of([mse[v][n]]) for n in lengths} for v in mse}
        in_range = {v: Interval.of([x]) for v, x in train_range.items() if x is not None}
        log_curves = {v: {n: Interval.of([math.log(mse[v][n])]) for n in lengths} for v in mse}
        summary = _Summary(curves, in_range, Interval.of([baseline]), lengths, (a, b), n_seeds=1,
                           log_curves=log_curves)
        findings = summary.findings()
        results["findings"] = {k: f.text for k, f in findings.items()}
        for message in summary.baseline_warnings():
            run.warn(message)

        self._plot_error(run, summary)
        recon_mse = self._plot_prefixes(run, test)
        results["prefix_mse_example_image"] = recon_mse
        self._report(run, summary, findings, params=results["params"], seeds=[run.seed])
        return results

    def summarize(self, run: RunContext, results: SeedResults) -> None:
        """With `seeds:`: the curves with their 95 % intervals over seeds, the findings from them, and
        the prefix figure of the first seed."""
        o = self.options
        table = results.table("results.csv")
        lengths = sorted({int(r["length"]) for r in table.summary})
        variants: list[str] = [v for v in o.variants if table.select(variant=v)]
        curves = {v: {n: table.interval("mse", variant=v, length=n) for n in lengths} for v in variants}
        in_range = {v: results.interval("mse_train_range", v) for v in variants
                    if isinstance(results.aggregate.get("mse_train_range", {}).get(v), Interval)}
        a, b = o.train_lengths
        log_curves = {v: {n: Interval.of([math.log(r["mse"]) for r in table.rows
                                          if r["variant"] == v and int(r["length"]) == n and r["mse"]])
                          for n in lengths} for v in variants}
        summary = _Summary(curves, in_range, results.interval("mse_mean_image_baseline"), lengths, (a, b),
                           n_seeds=len(results.seeds), log_curves=log_curves)
        findings = summary.findings()
        for message in summary.baseline_warnings():
            run.warn(message)
        self._plot_error(run, summary)
        first = results.run_dir / "seeds" / str(results.seeds[0]) / "figures" / "prefix_reconstructions.png"
        if first.exists():
            from probekit import atomic_open

            with atomic_open(run.path("figures/prefix_reconstructions.png"), "wb") as f:
                f.write(first.read_bytes())
        params = results.metrics[results.seeds[0]].get("params", {})
        self._report(run, summary, findings, params=params, seeds=list(results.seeds))

    # -- figures and report ---------------------------------------------------------------------
    def _plot_error(self, run: RunContext, summary: _Summary) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        a, b = summary.train_lengths
        lengths = summary.lengths
        fig, ax = plt.subplots(figsize=(7.6, 4.0))
        ax.axvspan(a, b, color="#e8d9a8", alpha=0.45, lw=0, label=f"training lengths [{a}, {b}]")
        base = summary.baseline
        ax.axhline(base.mean, color="gray", ls="--", lw=1.2, label="mean training image (no context)")
        if base.n > 1:
            ax.axhspan(base.low, base.high, color="gray", alpha=0.15, lw=0)
        for variant, curve in summary.curves.items():
            means = [curve[n].mean for n in lengths]
            line, = ax.plot(lengths, means, "o-", ms=4, label=variant)
            if summary.n_seeds > 1:
                ax.fill_between(lengths, [curve[n].low for n in lengths], [curve[n].high for n in lengths],
                                color=line.get_color(), alpha=0.2, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths)
        ax.set_xticklabels([str(n) for n in lengths], fontsize=8)
        ax.minorticks_off()
        top = max([base.high] + [curve[n].high for curve in summary.curves.values() for n in lengths])
        ax.set_ylim(0, top * 1.08)
        ax.set_xlabel("context length L (patches seen, log scale)")
        ax.set_ylabel("MSE per pixel on query patches\n(pixel values in [0, 1])")
        seeds = (f"mean and 95 % interval over {summary.n_seeds} seeds" if summary.n_seeds > 1
                 else "one seed (no interval)")
        ax.set_title(f"Reconstruction error vs context length ({seeds})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
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
        g = torch.Generator().manual_seed(epoch_seed(run.data_seed, 0, "length-generalization prefixes"))
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

    def _report(self, run: RunContext, summary: _Summary, findings: dict[str, Finding], *,
                params: dict[str, Any], seeds: list[int]) -> None:
        o = self.options
        a, b = summary.train_lengths
        lengths = summary.lengths
        many = summary.n_seeds > 1
        cell = (lambda iv: f"{iv.mean:.4f} ± {iv.ci95:.4f}") if many else (lambda iv: f"{iv.mean:.4f}")
        head = "| variant | params | " + " | ".join(
            f"L={n}{'*' if a <= n <= b else ''}" for n in lengths) + " | mean in [a, b] | / baseline |"
        lines = [head, "|---" * (len(lengths) + 4) + "|"]
        base = summary.baseline
        for v, curve in summary.curves.items():
            iv = summary.in_range.get(v)
            ratio = f"{iv.mean / base.mean:.2f}" if iv is not None and base.mean else "n/a"
            lines.append(f"| {v} | {params.get(v, '')} | " + " | ".join(cell(curve[n]) for n in lengths)
                         + f" | {cell(iv) if iv is not None else 'n/a'} | {ratio} |")
        lines.append(f"| {BASELINE} | 0 | " + " | ".join(cell(base) for _ in lengths) + f" | {cell(base)} | 1.00 |")
        seeds_text = (f"mean ± half-width of the 95 % interval over {len(seeds)} seeds ({', '.join(map(str, seeds))})"
                      if many else f"one seed ({seeds[0]}): no intervals, no finding is tested")
        clip = f"gradient norm clipped to {o.grad_clip}" if o.grad_clip else "no gradient clipping"
        if self.best_epochs:
            clip += (", the weights of the epoch with the lowest validation MSE ("
                     + ", ".join(f"{v}: epoch {e}" for v, e in self.best_epochs.items()) + ")")
        sched = (f"{o.schedule} schedule" + (f" after {o.warmup_steps} warm-up steps" if o.warmup_steps else ""))
        lines += ["", f"MSE per pixel on the query patches (pixels in [0, 1]), {seeds_text}; `*` marks the "
                      f"training lengths [{a}, {b}]. `{BASELINE}`: predicting every query patch by the mean "
                      f"training image (no context). Training: Adam lr {o.lr}, {sched}, {clip} (the study used "
                      f"Lamb, which torch does not ship), {o.epochs} x {o.steps_per_epoch or 'all'} steps of "
                      f"batch {o.batch_size}; {o.output} output head."]
        if findings:
            lines += ["", "Findings (each compares 95 % intervals over seeds and states the effect size):", ""]
            lines += [f"- {_FINDING_TITLES.get(k, k)}: {f.text}" for k, f in findings.items()]
        lines += ["", "![error vs length](figures/error_vs_length.png)", "",
                  "![prefix reconstructions](figures/prefix_reconstructions.png)"
                  + ("" if not many else f" (seed {seeds[0]})")]
        run.add_report("Length generalisation", "\n".join(lines))


_FINDING_TITLES = {
    "mamba_rises_beyond": "plain Mamba beyond its training lengths (longest evaluated vs longest trained)",
    "mamba-length-adaptive_rises_beyond": "length-adaptive Mamba beyond its training lengths",
    "transformer_rises_beyond": "transformer beyond its training lengths",
    "mamba_rises_beyond_log": "plain Mamba beyond its training lengths, on a log scale (ratio of geometric means)",
    "mamba-length-adaptive_rises_beyond_log": "length-adaptive Mamba beyond its training lengths, on a log scale",
    "transformer_rises_beyond_log": "transformer beyond its training lengths, on a log scale",
    "adaptive_vs_mamba_in_range": "length-adaptive vs plain Mamba, mean MSE over the training lengths",
}


class _Summary:
    """The numbers a report and a figure are made of, for one seed or over seeds: per variant and length
    an `Interval` of the MSE, per variant the mean over the training lengths, and the baseline."""

    def __init__(self, curves: dict[str, dict[int, Interval]], in_range: dict[str, Interval], baseline: Interval,
                 lengths: list[int], train_lengths: tuple[int, int], n_seeds: int,
                 log_curves: dict[str, dict[int, Interval]] | None = None):
        self.curves, self.in_range, self.baseline = curves, in_range, baseline
        self.log_curves = log_curves or {}
        self.lengths, self.train_lengths, self.n_seeds = lengths, train_lengths, n_seeds

    def findings(self) -> dict[str, Finding]:
        """Each variant's error at the longest evaluated length against that at the longest training length,
        on the MSE and on its logarithm (errors of different seeds can rise by different factors: the log
        compares the factors); the length-adaptive variant's mean over the training lengths against plain
        Mamba's."""
        b, top = self.train_lengths[1], self.lengths[-1]
        out: dict[str, Finding] = {}
        if top > b:
            for v, curve in self.curves.items():
                key = "mamba_rises_beyond" if v == "mamba" else f"{v}_rises_beyond"
                out[key] = compare(curve[top], curve[b], a_name=f"`{v}` at L={top}", b_name=f"at L={b}",
                                   digits=4)
                logs = self.log_curves.get(v)
                if logs:  # the same on a log scale: the ratio of the geometric means over seeds
                    f = compare(logs[top], logs[b], a_name=f"ln MSE of `{v}` at L={top}", b_name=f"at L={b}",
                                digits=3)
                    out[f"{key}_log"] = Finding(f"{f.text}; a factor of {math.exp(f.difference):.2f}", f.difference,
                                                f.effect_size, f.separated, f.tested)
        if "mamba" in self.in_range and "mamba-length-adaptive" in self.in_range:
            out["adaptive_vs_mamba_in_range"] = compare(
                self.in_range["mamba-length-adaptive"], self.in_range["mamba"],
                a_name="`mamba-length-adaptive`", b_name="`mamba`", digits=4)
        return out

    def baseline_warnings(self) -> list[str]:
        """A warning for every variant whose mean over the training lengths is not clearly below the baseline."""
        from probekit import baseline_warning

        a, b = self.train_lengths
        out = []
        for v, iv in self.in_range.items():
            message = baseline_warning(f"`{v}`: mean MSE over the training lengths [{a}, {b}]", iv, self.baseline,
                                       higher_is_better=False, baseline_name="the mean-training-image baseline")
            if message:
                out.append(message)
        return out


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _ratio(value: float | None, baseline: float) -> float | None:
    return value / baseline if value is not None and baseline else None
