"""The `inversion` probe: inverse networks that reconstruct the input from layers of a frozen model.

Two questions, kept apart:

- *modular* inverses (the study's method): one inverse module per adjacent pair of layers (or per
  model component, `granularity: component`), each trained on its pair alone; chained down to pixels
  they give the *chained* reconstruction, and each module's own test loss;
- *direct* inverses: for every layer one inverse trained from that layer straight to pixels, which
  measures the information the layer holds (the study's end-to-end baseline).

Every inverse trains on hidden states read out of the core's feature cache (the frozen model runs
once per input), validates after each epoch on held-out training rows and keeps its best epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from probekit import (
    BatchSizeOption,
    CorruptCheckpointError,
    Probe,
    RunContext,
    SpecError,
    Trainer,
    all_gather,
    epoch_seed,
    load_checkpoint,
    rank_batches,
    resolve_batch_size,
    save_checkpoint,
)
from probekit_inversion.modules import Arch, InverseChain, InverseModule, Site, build_inverse, n_parameters

#: image metrics used when the spec lists none (lpips added when a plugin registers it)
DEFAULT_METRICS = ("mse", "psnr", "ssim")
#: metrics of a spec's list that do not compare images
NON_IMAGE_METRICS = ("accuracy",)
#: smallest image side for the default SSIM (its 11-wide window pads by 5, by reflection)
SSIM_MIN_SIZE = 6
#: rows of states used to set each module's standardisation
STAT_ROWS = 1024
#: test rows searched for distinct images to show
SHOW_POOL = 512


def merge_defaults(options: dict[str, Any], suggestions: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """Fill the unset (`None`) architecture options with adapters' suggestions; the spec always wins.

    Suggestions may give architecture keys flat (`{"depth": 2}`) or under `architecture`.
    """
    arch = dict(options.get("architecture") or {})
    for suggestion in suggestions:
        if not suggestion:
            continue
        flat = dict(suggestion.get("architecture") or {})
        flat.update({k: v for k, v in suggestion.items() if k != "architecture" and k in ARCH_KEYS})
        for key, value in flat.items():
            if arch.get(key) is None and value is not None:
                arch[key] = value
    return {**options, "architecture": arch}


ARCH_KEYS = ("depth", "heads", "mlp_ratio", "hidden", "conv_channels", "position_embedding")


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def state_hash(modules: Sequence[nn.Module]) -> str:
    """A hash of the weights of `modules` (keys derived data on trained modules)."""
    h = hashlib.sha256()
    for m in modules:
        for k, t in m.state_dict().items():
            h.update(k.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def components_of(suggestions: Iterable[dict[str, Any] | None]) -> list[dict[str, Any]] | None:
    """The model components an adapter declares (`{"components": [...]}` from `probekit_probe_defaults`).

    Each entry is a layer name or `{"layer": name, "depth": n, "heads": h}`: the component ends at that
    layer, and the transformer inverse of a component of `n` layers has `n` layers (as in the study).
    """
    for suggestion in suggestions:
        if suggestion and suggestion.get("components"):
            return [{"layer": c} if isinstance(c, str) else dict(c) for c in suggestion["components"]]
    return None


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


class InversionProbe(Probe):
    """Trains modular inverses (chained to pixels) and direct inverses per layer; evaluates reconstructions."""

    def __init__(
        self,
        layers: list[str] | str | None = None,
        granularity: str = "layer",
        inverses: Sequence[str] = ("modular", "direct"),
        mode: str | None = None,
        target: str = "cached",
        epochs: int = 10,
        batch_size: BatchSizeOption = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        grad_clip: float | None = 1.0,
        validation: float = 0.1,
        patience: int | None = None,
        head_input: str = "onehot",
        analyses: Sequence[str] = (),
        architecture: dict[str, Any] | None = None,
        colour: dict[str, Any] | None = None,
        figure_images: int = 10,
        use_defaults: bool = True,
    ):
        self.layer_option = layers
        self.granularity = granularity
        self.inverses = ["direct"] if mode == "end-to-end" else list(dict.fromkeys(inverses))
        self.target = target
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay
        self.batch_option = batch_size  # an int or "auto"; self.batch_size: the current inverse's
        self.batch_size = batch_size if isinstance(batch_size, int) else 64
        self.grad_clip, self.validation, self.patience = grad_clip, validation, patience
        self.head_input = head_input
        self.analyses = list(analyses)
        self.architecture = dict(architecture or {})
        from probekit_inversion.options import ColourOptions

        self.colour = ColourOptions.model_validate(colour or {})
        self.figure_images = figure_images
        self.use_defaults = use_defaults
        self.sites: list[Site] = []
        self.arch: Arch | None = None
        self.overrides: dict[str, dict[str, Any]] = {}  # source layer -> architecture of its component
        self.positions: dict[str, int] = {}  # layer -> index in the model's layer list (depth axis)
        self.chain: InverseChain | None = None  # modular: steps[i] maps sites[i + 1] -> sites[i]
        self.direct: dict[str, InverseChain] = {}  # layer -> its direct inverse to the input
        self.train_losses: dict[str, list[float]] = {}  # tag -> losses per epoch
        self.best_epoch: dict[str, int] = {}  # tag -> kept epoch (1-based)
        self.target_var: dict[str, float] = {}
        self.train_rows: torch.Tensor | None = None
        self.val_rows: torch.Tensor | None = None
        self._kinds: list[str] | None = None  # set by `summarize` (no trained inverses there)
        self._lpips_warned = False

    @property
    def modular(self) -> bool:
        return "modular" in self.inverses

    # -- planning ------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Requested layer names in depth order (without the input)."""
        return [s.name for s in self.sites[1:]]

    def label(self, name: str) -> str:
        """How figures and reports name a layer (its friendly name, where the adapter gives one)."""
        site = next((s for s in self.sites if s.name == name), None)
        alias = site.meta.get("alias") if site is not None else None
        return str(alias) if alias else name

    def plan(self, run: RunContext) -> None:
        """Resolve layers (depth order), the input site and the architecture (with adapters' suggestions)."""
        model = run.require_model()
        layers = model.layers()
        order = {layer.name: i for i, layer in enumerate(layers)}
        self.positions = order
        from probekit import get_plugin_manager

        suggestions = list(get_plugin_manager().hook.probekit_probe_defaults(probe="inversion", model=model))
        self.overrides = {}
        if self.granularity == "component":
            components = components_of(suggestions)
            if not components:
                raise SpecError(
                    f"the {model.type_name} model declares no components",
                    path="probe.granularity",
                    fix="List the layers to invert with `granularity: layer` and `layers: [...]` (ViT and DETR "
                    "adapters declare their components).",
                )
            wanted = []
            for c in components:
                name = model.layer(c["layer"]).name
                wanted.append(name)
                self.overrides[name] = {k: c[k] for k in ("depth", "heads") if c.get(k)}
        elif self.layer_option == "all":
            wanted = [layer.name for layer in layers if layer.kind != "image"]
        else:
            wanted = []
            for name in dict.fromkeys(self.layer_option or []):
                try:
                    wanted.append(model.layer(name).name)
                except KeyError:
                    raise SpecError(
                        model.unknown_layer_message(name),
                        path="probe.layers",
                        fix="Use names from `probekit run SPEC --dry-run` or the adapter's docs.",
                    ) from None
            wanted = list(dict.fromkeys(wanted))
            if wanted != sorted(wanted, key=order.__getitem__):
                run.log(
                    "inversion: layers reordered by depth: "
                    + ", ".join(sorted(wanted, key=order.__getitem__))
                )
            wanted.sort(key=order.__getitem__)
        if not wanted:
            raise SpecError("no layers to invert", path="probe.layers", fix="List at least one layer.")
        example = model.example_inputs(1)
        if not isinstance(example, torch.Tensor):
            raise SpecError(
                f"the inversion probe reconstructs tensor inputs; {model.type_name} models take "
                f"{type(example).__name__} inputs",
                path="model.type",
                fix="Use a model adapter whose inputs are image tensors.",
            )
        if not example.is_floating_point():
            raise SpecError(
                f"the inversion probe reconstructs float inputs (images, embeddings); {model.type_name} "
                f"models here take {example.dtype} inputs (token ids), which have no pixel space to reconstruct",
                path="model.type",
                fix="Use an image model (vit, detr, module), or feed the model float embeddings.",
            )
        in_shape = tuple(example.shape[1:])
        input_site = Site("input", "image" if len(in_shape) == 3 else "tokens", in_shape)
        self.sites = [input_site] + [Site.of(model.layer(n)) for n in wanted]
        options = {"architecture": self.architecture}
        if self.use_defaults:
            options = merge_defaults(options, suggestions)
        try:
            self.arch = Arch.from_options(options["architecture"])
        except ValueError as exc:
            raise SpecError(str(exc), path="probe.architecture", fix="See `probekit schema`.") from None

    def build_step(self, i: int, tag: str, device: torch.device, seed: int) -> InverseModule:
        """A freshly initialised inverse module for pair `sites[i + 1] -> sites[i]` (seeded by `tag`)."""
        assert self.arch is not None
        torch.manual_seed(epoch_seed(seed, 0, f"init {tag}"))
        source, target = self.sites[i + 1], self.sites[i]
        arch = dataclasses.replace(self.arch, **self.overrides.get(source.name, {}))
        image_hw = tuple(self.sites[0].shape[1:]) if len(self.sites[0].shape) == 3 else None
        try:
            module = build_inverse(source, target, arch, image_hw, self.head_input)  # type: ignore[arg-type]
        except ValueError as exc:
            raise SpecError(
                f"inverse module {source.name} -> {target.name}: {exc}",
                path="probe.architecture",
                fix="Adjust the architecture options.",
            ) from None
        return module.to(device)

    def dry_run(self, run: RunContext) -> dict[str, Any]:
        self.plan(run)
        out = {}
        for i in range(len(self.sites) - 1):
            m = self.build_step(i, "dry", torch.device("cpu"), run.seed)
            out[f"inverse {self.sites[i + 1].name} -> {self.sites[i].name}"] = (
                f"{m.description}, {n_parameters(m):,} parameters"
            )
        if "direct" in self.inverses:
            out["direct inverses"] = (
                "for each layer k, the modules from k down to the input trained jointly to pixels"
                + (" (the first layer's is its modular module)" if self._reuse_first() else "")
            )
        return out

    def _reuse_first(self) -> bool:
        """Whether the first layer's direct inverse is its modular module (same pair, same loss)."""
        return self.modular and self.target == "cached"

    # -- training ------------------------------------------------------------------------
    def fit(self, run: RunContext) -> None:
        self.plan(run)
        if "colour" in self.analyses:  # fail before training when the perturbations are not installed
            from probekit_inversion.analyses import colour_perturbations

            colour_perturbations(run, self.colour)
        names = self.names
        run.log(
            f"inversion: {' and '.join(self.inverses)} inverses for {', '.join(map(self.label, names))} "
            f"({self.granularity} granularity; at most {self.epochs} epochs, batch {self.batch_option}, "
            f"best of {self.validation:.0%} held-out training rows kept)"
        )
        feats = run.features(names, "train", include_input=True)
        self._split(run, len(feats))
        if self.modular:
            self._fit_modular(run, feats)
        if "direct" in self.inverses:
            self._fit_direct(run, feats)

    def _split(self, run: RunContext, n: int) -> None:
        """Training and validation rows of the cached training set (fixed by the seed)."""
        g = torch.Generator().manual_seed(epoch_seed(run.seed, 0, "validation rows"))
        order = torch.randperm(n, generator=g)
        n_val = min(n - 1, max(1, round(self.validation * n))) if self.validation > 0 and n > 1 else 0
        self.val_rows, self.train_rows = order[:n_val].sort().values, order[n_val:]

    def _stats_sample(self, feats: Any, names: Sequence[str]) -> dict[str, torch.Tensor]:
        assert self.train_rows is not None
        return feats.batch(self.train_rows[:STAT_ROWS].sort().values, names=list(names))

    def _variance(self, sample: torch.Tensor) -> float:
        return max(float(sample.float().var()), 1e-12)

    def _train(
        self,
        run: RunContext,
        modules: dict[str, nn.Module],
        tag: str,
        file: str,
        batches: Any,
        step: Any,
        val_loss: Any,
    ) -> None:
        """Train `modules` for at most `epochs`, validating after each; keep the best epoch's weights."""
        params = [p for m in modules.values() for p in m.parameters()]
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.grad_clip is not None:
            clip = self.grad_clip

            def clip_gradients(*_: Any) -> None:  # before every optimiser step (after DDP's all-reduce)
                nn.utils.clip_grad_norm_(params, clip)

            opt.register_step_pre_hook(clip_gradients)
        validated = self.val_rows is not None and len(self.val_rows) > 0
        best_file = run.checkpoint_dir / (file + ".best")
        if validated:
            self._check_best_record(run, tag, best_file, run.checkpoint_dir / file)
        trainer = Trainer(
            modules,
            opt,
            epochs=self.epochs,
            checkpoint=run.checkpoint_dir / file,
            seed=run.seed,
            tag=tag,
            progress=run.progress,
            log=run.debug,
        )
        assert self.train_rows is not None
        total = math.ceil(len(self.train_rows) / self.batch_size)
        if not validated:
            self.train_losses[tag] = trainer.fit(batches, step, total=total, sharded=True)
            self.best_epoch[tag] = len(self.train_losses[tag])
            return
        record: dict[str, Any] = {"val": [], "best": -1, "state": None, "stopped": False}
        if best_file.exists():
            saved = load_checkpoint(best_file)  # checked by _check_best_record
            if len(saved["val"]) <= trainer.epoch:
                record = saved
            else:  # the training checkpoint was damaged and training starts again: so does the record
                run.log(f"{tag}: the record of the best epoch is ahead of the training checkpoint (epoch "
                        f"{trainer.epoch}); validating again from the start")

        def validate() -> None:
            for m in modules.values():
                m.eval()
            with torch.no_grad():
                value = float(val_loss())
            record["val"].append(value)
            if record["best"] < 0 or value < record["val"][record["best"]]:
                record["best"] = len(record["val"]) - 1
                record["state"] = {k: {n: t.detach().cpu().clone() for n, t in m.state_dict().items()}
                                   for k, m in modules.items()}
            if self.patience is not None and len(record["val"]) - 1 - record["best"] >= self.patience:
                record["stopped"] = True
            if _is_main():
                save_checkpoint(record, best_file)

        if len(record["val"]) < trainer.epoch:  # stopped between the epoch's checkpoint and its validation
            validate()
        while trainer.epoch < self.epochs and not record["stopped"]:
            trainer.epochs = trainer.epoch + 1  # one epoch at a time, validated after each
            trainer.fit(batches, step, total=total, sharded=True)
            validate()
        trainer.epochs = self.epochs
        for k, m in modules.items():
            m.load_state_dict(record["state"][k])
            m.eval()
        self.train_losses[tag] = list(trainer.losses)
        self.best_epoch[tag] = record["best"] + 1
        run.debug(f"{tag}: validation losses {[round(v, 6) for v in record['val']]}, kept epoch "
                  f"{record['best'] + 1}" + (" (stopped early)" if record["stopped"] else ""))

    def _batch_rows(self, idx: torch.Tensor) -> torch.Tensor:
        assert self.train_rows is not None
        return self.train_rows[idx]

    def _fit_modular(self, run: RunContext, feats: Any) -> None:
        device = run.device
        steps: list[InverseModule | None] = [None] * (len(self.sites) - 1)
        # chained targets train from the top down, each on the output of the module above it
        order = range(len(steps) - 1, -1, -1) if self.target == "chained" else range(len(steps))
        predicted: Any = None  # chained: cached predictions of the current source layer
        assert self.train_rows is not None and self.val_rows is not None
        train_rows = self.train_rows
        n_train = len(train_rows)
        for i in order:
            source, target = self.sites[i + 1], self.sites[i]
            tag = f"inverse {source.name}->{target.name}"
            module = self.build_step(i, tag, device, run.seed)
            sample = self._stats_sample(feats, [source.name, target.name])
            module.fit_statistics(sample[source.name], sample[target.name])
            var = self._variance(sample[target.name])
            self.target_var[target.name] = var
            src_feats = feats if predicted is None else predicted
            src_key = source.name if predicted is None else "predicted"

            def pair(rows: torch.Tensor, src_feats: Any = src_feats, src_key: str = src_key,
                     tgt: str = target.name) -> tuple[torch.Tensor, torch.Tensor]:
                return src_feats.batch(rows, names=[src_key])[src_key], feats.batch(rows, names=[tgt])[tgt]

            def batches(g: torch.Generator, pair: Any = pair) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
                for idx in rank_batches(n_train, self.batch_size, g):
                    yield pair(self._batch_rows(idx))

            def step(
                batch: tuple[torch.Tensor, torch.Tensor], module: nn.Module = module, var: float = var
            ) -> torch.Tensor:
                x, y = batch[0].to(device), batch[1].to(device)
                return F.mse_loss(module(x), y) / var

            def val_loss(pair: Any = pair, step: Any = step) -> float:
                return self._mean_over(self.val_rows, lambda rows: step(pair(rows)))

            # batch_size auto: the largest batch that fits, searched once per module, kept for --resume
            def trial(b: int, pair: Any = pair, step: Any = step) -> torch.Tensor:
                return step(pair(train_rows[:b]))

            self.batch_size = resolve_batch_size(run, tag, self.batch_option, trial, modules=[module],
                                                 maximum=n_train)
            self._train(run, {"inverse": module}, tag, f"inverse-{i:02d}-{safe_name(source.name)}.pt",
                        batches, step, val_loss)
            run.log(
                f"inverse {self.label(source.name)}->{self.label(target.name)}: {module.description}, "
                f"{n_parameters(module):,} parameters, kept epoch {self.best_epoch[tag]}/{len(self.train_losses[tag])}"
            )
            steps[i] = module
            if self.target == "chained" and i > 0:
                predicted = self._predict(run, feats, predicted, source.name, module)
        self.chain = InverseChain([m for m in steps if m is not None]).to(device).eval()

    @staticmethod
    def _check_best_record(run: RunContext, tag: str, best_file: Path, checkpoint: Path) -> None:
        """A damaged record of the best epoch cannot be rebuilt from the training checkpoint (the best
        weights may be of an earlier epoch): both are set aside and the module trains again from the
        start (deterministic, so only time is lost). Rank 0 decides; the others wait for it."""
        damaged = None
        if _is_main() and best_file.exists():
            try:
                load_checkpoint(best_file)
            except CorruptCheckpointError as exc:
                checkpoint.unlink(missing_ok=True)  # first: a kill in between leaves the damaged record
                aside = best_file.with_name(best_file.name + ".corrupt")
                best_file.replace(aside)
                damaged = f"{exc}; moved to {aside.name}"
        damaged = all_gather(damaged)[0]  # also a barrier: the files are read after rank 0 set them aside
        if damaged is not None:
            run.log(f"{tag}: {damaged}; training this module again from the start")

    def _mean_over(self, rows: torch.Tensor | None, loss: Any) -> float:
        """The mean of a per-batch mean loss over `rows`, weighted by batch size."""
        if rows is None or len(rows) == 0:
            return float("nan")
        total = 0.0
        for part in rows.split(max(self.batch_size, 64)):
            total += float(loss(part)) * len(part)
        return total / len(rows)

    def _predict(self, run: RunContext, feats: Any, predicted: Any, source: str, module: nn.Module) -> Any:
        """The module's outputs over the training set, cached on disk under the run's checkpoints."""
        from probekit import FeatureCache, FeatureSet

        previous = getattr(predicted, "key", "cached")
        key = hashlib.sha256(f"{state_hash([module])}-{previous}".encode()).hexdigest()[:32]
        src = feats if predicted is None else predicted
        src_key = source if predicted is None else "predicted"

        def compute(wanted: Sequence[str]) -> Iterator[dict[str, Any]]:
            with torch.no_grad():
                for idx in torch.arange(len(feats)).split(max(self.batch_size, 256)):
                    x = src.batch(idx, names=[src_key])[src_key].to(run.device)
                    yield {"predicted": module(x)}

        cache = FeatureCache(run.checkpoint_dir / "chained")
        out = FeatureSet(cache.get({"predicted": key}, compute))
        out.key = key  # type: ignore[attr-defined]
        return out

    def _fit_direct(self, run: RunContext, feats: Any) -> None:
        device = run.device
        sample_in = self._stats_sample(feats, ["input"])["input"]
        var = self._variance(sample_in)
        self.target_var["input"] = var
        stats_sample = self._stats_sample(feats, [s.name for s in self.sites])
        assert self.train_rows is not None
        train_rows = self.train_rows
        n_train = len(train_rows)
        for depth in range(1, len(self.sites)):
            name = self.sites[depth].name
            if depth == 1 and self._reuse_first():
                assert self.chain is not None
                self.direct[name] = InverseChain([self.chain.steps[0]]).to(device).eval()
                continue
            steps = []
            for i in range(depth):
                m = self.build_step(i, f"e2e {name} {i}", device, run.seed)
                m.fit_statistics(stats_sample[self.sites[i + 1].name], stats_sample[self.sites[i].name])
                steps.append(m)
            chain = InverseChain(steps).to(device)
            tag = f"direct {name}->input"

            def step(
                batch: dict[str, torch.Tensor], chain: InverseChain = chain, name: str = name, depth: int = depth
            ) -> torch.Tensor:
                x, y = batch[name].to(device), batch["input"].to(device)
                return F.mse_loss(chain.reconstruct(x, depth), y) / var

            def batches(g: torch.Generator, name: str = name) -> Iterable[dict[str, torch.Tensor]]:
                for idx in rank_batches(n_train, self.batch_size, g):
                    yield feats.batch(self._batch_rows(idx), names=[name, "input"])

            def val_loss(name: str = name, step: Any = step) -> float:
                return self._mean_over(self.val_rows, lambda rows: step(feats.batch(rows, names=[name, "input"])))

            def trial(b: int, name: str = name, step: Any = step) -> torch.Tensor:
                return step(feats.batch(train_rows[:b], names=[name, "input"]))

            # batch_size auto: see _fit_modular
            self.batch_size = resolve_batch_size(run, tag, self.batch_option, trial, modules=[chain], maximum=n_train)
            self._train(run, {"chain": chain}, tag, f"direct-{depth:02d}-{safe_name(name)}.pt", batches, step,
                        val_loss)
            run.log(f"direct inverse {self.label(name)}->input: {n_parameters(chain):,} parameters, kept epoch "
                    f"{self.best_epoch[tag]}/{len(self.train_losses[tag])}")
            self.direct[name] = chain

    # -- reconstruction --------------------------------------------------------------------
    def decoder_for(self, name: str, kind: str | None = None) -> Any:
        """`f(states) -> model-ready input` decoding states of layer `name`.

        `kind` is `chained` (the modular chain) or `direct`; by default the chain when modular inverses
        were trained, else the direct inverse.
        """
        kind = kind or ("chained" if self.chain is not None else "direct")
        if kind == "chained":
            assert self.chain is not None
            depth = self.names.index(name) + 1
            chained = self.chain
            return lambda x: chained.reconstruct(x, depth)
        chain = self.direct[name]
        return lambda x: chain.reconstruct(x, len(chain.steps))

    @property
    def kinds(self) -> list[str]:
        """The reconstructions evaluated: `direct` and/or `chained`."""
        if self._kinds is not None:
            return list(self._kinds)
        return [k for k, on in (("direct", bool(self.direct)), ("chained", self.chain is not None)) if on]

    def to_image(self, run: RunContext, inputs: torch.Tensor) -> torch.Tensor:
        """Model-ready inputs (or reconstructions of them) -> images in [0, 1]."""
        return run.require_model().postprocess(inputs).clamp(0, 1)

    def metric_set(self, run: RunContext) -> dict[str, Any]:
        """The image metrics: the spec's list, or mse/psnr/ssim (+ lpips when a plugin registers it)."""
        if run.spec.metrics:
            metrics = run.metrics()
            for name in list(metrics):
                if name in NON_IMAGE_METRICS:
                    run.log(f"inversion: metric '{name}' does not compare images; left out")
                    metrics.pop(name)
            return metrics
        from probekit import get_plugin_manager

        available = set(get_plugin_manager().names("metrics"))
        shape = self.sites[0].shape if self.sites else ()
        small = len(shape) == 3 and min(shape[1:]) < SSIM_MIN_SIZE  # SSIM's 11x11 window does not fit
        metrics = {
            n: run.create_metric(n) for n in DEFAULT_METRICS if n in available and not (n == "ssim" and small)
        }
        if "lpips" in available and not self._lpips_warned:
            try:
                metrics["lpips"] = run.create_metric("lpips")
            except Exception as exc:  # e.g. its backbone weights are not available offline
                if not self._lpips_warned:  # tried once per run: later metric sets leave it out silently
                    run.log(
                        f"inversion: lpips left out of the default metrics ({type(exc).__name__}: "
                        f"{str(exc)[:160]}...); list it under `metrics:` with its options to require it"
                    )
                    self._lpips_warned = True
        return metrics

    @staticmethod
    def update_metric(metric: Any, name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
        if name == "lpips" and pred.shape[1] == 1:  # LPIPS networks take RGB
            pred, target = pred.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        metric.update(pred.contiguous(), target.contiguous())

    def _mean_input(self, run: RunContext) -> torch.Tensor:
        """The mean model-ready training input (the trivial baseline's reconstruction)."""
        feats = run.features(self.names, "train", include_input=True)
        total: torch.Tensor | None = None
        for idx in torch.arange(len(feats)).split(256):
            x = feats.batch(idx, names=["input"])["input"].double().sum(0)
            total = x if total is None else total + x
        assert total is not None
        return (total / len(feats)).float()

    def pick_images(self, test: Any, k: int) -> list[int]:
        """Test rows to show: the first of each class, then the rows farthest from those chosen.

        Classes are looked up over the whole test split (data sets may be sorted by class); the
        farthest rows are searched among `SHOW_POOL` rows spread evenly over it.
        """
        n = len(test)
        labels = test.batch(torch.arange(n), names=["labels"])["labels"].reshape(n, -1)[:, 0]
        chosen: list[int] = []
        for label in dict.fromkeys(labels.tolist()):
            if len(chosen) < k:
                chosen.append(int((labels == label).nonzero()[0]))
        pool = sorted(set(torch.linspace(0, n - 1, min(n, SHOW_POOL)).round().long().tolist()) | set(chosen))
        x = test.batch(torch.tensor(pool), names=["input"])["input"].flatten(1).float()
        at = {row: i for i, row in enumerate(pool)}
        dist = torch.cdist(x, x[[at[c] for c in chosen]]).min(1).values
        while len(chosen) < min(k, n):
            nxt = int(dist.argmax())
            chosen.append(pool[nxt])
            dist = torch.minimum(dist, torch.cdist(x, x[nxt : nxt + 1])[:, 0])
        return chosen

    def model_accuracy(self, run: RunContext, test: Any) -> float | None:
        """Top-1 accuracy of the frozen model on the test split (None when it has no class logits)."""
        model = run.require_model()
        correct = total = 0
        with torch.no_grad():
            for idx in torch.arange(len(test)).split(run.spec.data.batch_size if run.spec.data else 64):
                batch = test.batch(idx, names=["input", "labels"], device=run.device)
                try:
                    logits = model.logits(model.forward(batch["input"]))
                except (TypeError, AttributeError, KeyError):
                    return None
                labels = batch["labels"].reshape(-1)
                if logits.dim() != 2 or len(labels) != len(logits):
                    return None
                correct += int((logits.argmax(-1) == labels).sum())
                total += len(labels)
        return correct / total if total else None

    def evaluate(self, run: RunContext) -> dict[str, Any]:
        from probekit_inversion import report

        names, kinds = self.names, self.kinds
        test = run.features(names, "test", include_input=True)
        metrics = {(kind, name): self.metric_set(run) for kind in kinds for name in names}
        base_metrics = self.metric_set(run)
        mean_input = self._mean_input(run).to(run.device)
        sums = {s.name: 0.0 for s in self.sites[1:]}
        with torch.no_grad():
            parts = torch.arange(len(test)).split(run.spec.data.batch_size if run.spec.data else 64)
            for idx in run.progress(parts, desc="inversion: test batches"):
                batch = test.batch(idx, device=run.device)
                target = self.to_image(run, batch["input"])
                mean_image = self.to_image(run, mean_input.expand_as(batch["input"]))
                for mname, metric in base_metrics.items():
                    self.update_metric(metric, mname, mean_image, target)
                for kind in kinds:
                    for name in names:
                        rec = self.to_image(run, self.decoder_for(name, kind)(batch[name]))
                        for mname, metric in metrics[(kind, name)].items():
                            self.update_metric(metric, mname, rec, target)
                if self.chain is not None:
                    for i, step in enumerate(self.chain.steps):
                        src, tgt = self.sites[i + 1].name, self.sites[i].name
                        err = F.mse_loss(step(batch[src]), batch[tgt], reduction="sum") / batch[tgt][0].numel()
                        sums[src] += float(err)
        values = {kind: {n: {m: float(metric.compute()) for m, metric in metrics[(kind, n)].items()}
                         for n in names} for kind in kinds}
        baseline = {m: float(metric.compute()) for m, metric in base_metrics.items()}
        module_loss: dict[str, float] = {}
        if self.chain is not None:
            module_loss = {
                name: sums[name] / len(test) / self.target_var[self.sites[i].name] for i, name in enumerate(names)
            }
        rows = [{"layer": n, "inverse": kind, "metric": m, "value": v}
                for n in names for kind in kinds for m, v in values[kind][n].items()]
        rows += [{"layer": n, "inverse": "module", "metric": "loss", "value": module_loss[n]} for n in module_loss]
        rows += [{"layer": "mean training image", "inverse": "baseline", "metric": m, "value": v}
                 for m, v in baseline.items()]
        run.write_csv("results.csv", rows, ["layer", "inverse", "metric", "value"])
        shown = self.pick_images(test, self.figure_images)
        with torch.no_grad():
            batch = test.batch(torch.tensor(shown), device=run.device)
            images = {"original": self.to_image(run, batch["input"]).cpu()}
            for kind in kinds:
                images.update({f"{kind} {n}": self.to_image(run, self.decoder_for(n, kind)(batch[n])).cpu()
                               for n in names})
        accuracy = self.model_accuracy(run, test)
        report.reconstructions_figure(run, self, images)
        report.error_vs_depth_figure(run, self, values, module_loss, baseline)
        results: dict[str, Any] = {kind: {m: {n: values[kind][n][m] for n in names} for m in baseline}
                                   for kind in kinds}
        if module_loss:
            results["module_loss"] = module_loss
        results["baseline"] = baseline
        if accuracy is not None:
            results["model_accuracy"] = accuracy
        results["train_loss"] = {tag: losses[-1] for tag, losses in self.train_losses.items() if losses}
        results["best_epoch"] = dict(self.best_epoch)
        results["granularity"] = self.granularity
        results["inverses"] = list(self.inverses)
        results["layers"] = [{"name": n, "label": self.label(n), "position": self.positions.get(n, i)}
                             for i, n in enumerate(names)]
        if "correlation" in self.analyses:
            from probekit_inversion.analyses import correlation

            results["correlation"] = correlation(run, self, test)
        if "colour" in self.analyses:
            from probekit_inversion.analyses import colour

            results["colour"] = colour(run, self)
        report.add_report(run, self, values, module_loss, baseline, accuracy)
        return _finite(results)

    def summarize(self, run: RunContext, results: Any) -> None:
        """After the seed runs of `seeds:`: error vs depth with 95 % intervals, the table and the finding."""
        _summarize(self, run, results)


def _summarize(probe: InversionProbe, run: RunContext, results: Any) -> None:
    """Figures and findings over the seed runs of `seeds:` (95 % intervals; see `InversionProbe.summarize`)."""
    import shutil

    from probekit import compare
    from probekit_inversion import report

    first = results.metrics[results.seeds[0]]
    layers = first["layers"]
    names = [entry["name"] for entry in layers]
    probe.sites = [Site("input", "image", ())] + [
        Site(entry["name"], "", (), {"alias": entry["label"]} if entry["label"] != entry["name"] else {})
        for entry in layers
    ]
    probe.positions = {entry["name"]: entry["position"] for entry in layers}
    probe._kinds = [k for k in ("direct", "chained") if k in first]
    table = results.table("results.csv")
    values: dict[str, dict[str, dict[str, float]]] = {k: {n: {} for n in names} for k in probe._kinds}
    errors: dict[tuple[str, str, str], float] = {}
    module_loss: dict[str, float] = {}
    baseline: dict[str, float] = {}
    for row in table.summary:
        layer, kind, metric = str(row["layer"]), str(row["inverse"]), str(row["metric"])
        mean, ci = float(row["value"]), row.get("value_ci95")
        ci = float(ci) if ci not in (None, "") and ci == ci else 0.0
        if kind == "baseline":
            baseline[metric] = mean
        elif kind == "module":
            module_loss[layer] = mean
            errors[("module", layer, "loss")] = ci
        elif kind in values and layer in values[kind]:
            values[kind][layer][metric] = mean
            errors[(kind, layer, metric)] = ci
    report.error_vs_depth_figure(run, probe, values, module_loss, baseline, errors)
    seed_figures = Path(run.run_dir) / "seeds" / str(results.seeds[0]) / "figures"
    for figure in sorted(seed_figures.glob("*.png")):
        if figure.name != "error_vs_depth.png":
            shutil.copyfile(figure, run.figures_dir / figure.name)
    metric = "mse" if "mse" in baseline else next(iter(baseline))
    lines = [f"{len(results.seeds)} seeds {results.seeds} (the inverses' initialisation, data order and the "
             "frozen model's training differ; the data split is the same). Cells: mean ± half-width of the 95 % "
             "interval of the mean.", ""]
    accuracy = results.aggregate.get("model_accuracy")
    if accuracy is not None:
        lines += [f"The frozen model's test accuracy: {accuracy.format(3)}.", ""]
    head = ["layer"] + [f"{k} {metric}" for k in probe._kinds] + (["module test loss"] if module_loss else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        cells = [f"`{probe.label(n)}`"]
        cells += [results.interval(k, metric, n).format(4) for k in probe._kinds]
        if module_loss:
            cells.append(results.interval("module_loss", n).format(4))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Mean training image as the reconstruction: {metric} {baseline.get(metric, float('nan')):.4g}.", ""]
    kind = "direct" if "direct" in probe._kinds else probe._kinds[0]
    if len(names) > 1:
        finding = compare(results.values(kind, metric, names[-1]), results.values(kind, metric, names[0]),
                          a_name=f"{kind} {metric} from `{probe.label(names[-1])}`",
                          b_name=f"from `{probe.label(names[0])}`", digits=4)
        lines += [f"Finding: {finding.text}.", ""]
    lines += ["![error vs depth](figures/error_vs_depth.png)", "",
              f"![reconstructions (seed {results.seeds[0]})](figures/reconstructions.png)", ""]
    run.add_report("Feature inversion over seeds", "\n".join(lines))


def _finite(value: Any) -> Any:
    """NaN / inf -> None, so that metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
