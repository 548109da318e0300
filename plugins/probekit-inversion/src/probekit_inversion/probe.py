"""The `inversion` probe: inverse networks that reconstruct the input from layers of a frozen model.

Modular training (the default) trains one inverse module per adjacent pair of
requested layers, from hidden states read out of the core's feature cache: the
frozen model runs once per input, not once per module per epoch. The chain of
modules from layer k down to the input reconstructs the image from layer k.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from probekit import Probe, RunContext, SpecError, Trainer, epoch_seed, rank_batches, resolve_batch_size
from probekit_inversion.modules import Arch, InverseChain, InverseModule, Site, build_inverse, n_parameters

#: image metrics used when the spec lists none (lpips added when a plugin registers it)
DEFAULT_METRICS = ("mse", "psnr", "ssim")
#: metrics of a spec's list that do not compare images
NON_IMAGE_METRICS = ("accuracy",)
#: smallest image side for the default SSIM (its 11-wide window pads by 5, by reflection)
SSIM_MIN_SIZE = 6
#: rows of states used to set each module's standardisation
STAT_ROWS = 1024


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


class InversionProbe(Probe):
    """Trains inverse modules per adjacent layer pair (or a chain per depth); evaluates reconstructions."""

    def __init__(
        self,
        layers: list[str] | str,
        mode: str = "modular",
        target: str = "cached",
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        analyses: Sequence[str] = (),
        architecture: dict[str, Any] | None = None,
        colour: dict[str, Any] | None = None,
        figure_images: int = 6,
        use_defaults: bool = True,
    ):
        self.layer_option = layers
        self.mode = mode
        self.target = target
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.batch_option = batch_size  # an int or "auto"; self.batch_size: the current module's
        self.analyses = list(analyses)
        self.architecture = dict(architecture or {})
        from probekit_inversion.options import ColourOptions

        self.colour = ColourOptions.model_validate(colour or {})
        self.figure_images = figure_images
        self.use_defaults = use_defaults
        self.sites: list[Site] = []
        self.arch: Arch | None = None
        self.chain: InverseChain | None = None  # modular: steps[i] maps sites[i + 1] -> sites[i]
        self.e2e: dict[str, InverseChain] = {}  # end-to-end: layer name -> its own chain to the input
        self.train_losses: dict[str, list[float]] = {}
        self.target_var: dict[str, float] = {}
        self._lpips_warned = False

    # -- planning ------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Requested layer names in depth order (without the input)."""
        return [s.name for s in self.sites[1:]]

    def plan(self, run: RunContext) -> None:
        """Resolve layers (depth order), the input site and the architecture (with adapters' suggestions)."""
        model = run.model
        layers = model.layers()
        order = {layer.name: i for i, layer in enumerate(layers)}
        if self.layer_option == "all":
            wanted = [layer.name for layer in layers if layer.kind != "image"]
        else:
            wanted = list(dict.fromkeys(self.layer_option))
            for name in wanted:
                if name not in order:
                    raise SpecError(
                        model.unknown_layer_message(name),
                        path="probe.layers",
                        fix="Use names from `probekit run SPEC --dry-run` or the adapter's docs.",
                    )
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
            from probekit import get_plugin_manager

            suggestions = get_plugin_manager().hook.probekit_probe_defaults(probe="inversion", model=model)
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
        image_hw = tuple(self.sites[0].shape[1:]) if len(self.sites[0].shape) == 3 else None
        try:
            module = build_inverse(source, target, self.arch, image_hw)  # type: ignore[arg-type]
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
        return out

    # -- training ------------------------------------------------------------------------
    def fit(self, run: RunContext) -> None:
        self.plan(run)
        if "colour" in self.analyses:  # fail before training when the perturbations are not installed
            from probekit_inversion.analyses import colour_perturbations

            colour_perturbations(run, self.colour)
        names = self.names
        run.log(
            f"inversion: {self.mode} training of inverse modules for {', '.join(names)} "
            f"({self.epochs} epochs, batch {self.batch_option})"
        )
        feats = run.features(names, "train", include_input=True)
        if self.mode == "modular":
            self._fit_modular(run, feats)
        else:
            self._fit_end_to_end(run, feats)

    def _stats_sample(self, feats: Any, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return feats.batch(range(min(len(feats), STAT_ROWS)), names=list(names))

    def _variance(self, sample: torch.Tensor) -> float:
        return max(float(sample.float().var()), 1e-12)

    def _trainer(self, run: RunContext, modules: dict[str, nn.Module], tag: str, file: str) -> Trainer:
        params = [p for m in modules.values() for p in m.parameters()]
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return Trainer(
            modules,
            opt,
            epochs=self.epochs,
            checkpoint=run.checkpoint_dir / file,
            seed=run.seed,
            tag=tag,
            progress=run.progress,
            log=run.debug,
        )

    def _fit_modular(self, run: RunContext, feats: Any) -> None:
        device = run.device
        steps: list[InverseModule | None] = [None] * (len(self.sites) - 1)
        # chained targets train from the top down, each on the output of the module above it
        order = range(len(steps) - 1, -1, -1) if self.target == "chained" else range(len(steps))
        predicted: Any = None  # chained: cached predictions of the current source layer
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

            def batches(
                g: torch.Generator, src_feats: Any = src_feats, src_key: str = src_key, tgt: str = target.name
            ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
                for idx in rank_batches(len(feats), self.batch_size, g):
                    yield (src_feats.batch(idx, names=[src_key])[src_key], feats.batch(idx, names=[tgt])[tgt])

            def step(
                batch: tuple[torch.Tensor, torch.Tensor], module: nn.Module = module, var: float = var
            ) -> torch.Tensor:
                x, y = batch[0].to(device), batch[1].to(device)
                return F.mse_loss(module(x), y) / var

            # batch_size auto: the largest batch that fits, searched once per module, kept for --resume
            self.batch_size = resolve_batch_size(
                run, tag, self.batch_option,
                lambda b, f=src_feats, k=src_key, t=target.name: step(  # the first b examples
                    (f.batch(torch.arange(b), names=[k])[k], feats.batch(torch.arange(b), names=[t])[t])),
                modules=[module], maximum=len(feats))
            n_batches = math.ceil(len(feats) / self.batch_size)
            trainer = self._trainer(
                run, {"inverse": module}, tag, f"inverse-{i:02d}-{safe_name(source.name)}.pt"
            )
            self.train_losses[source.name] = trainer.fit(batches, step, total=n_batches, sharded=True)
            module.eval()
            run.log(
                f"{tag}: {module.description}, {n_parameters(module):,} parameters, "
                f"final loss {self.train_losses[source.name][-1]:.4g}"
            )
            steps[i] = module
            if self.target == "chained" and i > 0:
                predicted = self._predict(run, feats, predicted, source.name, module)
        self.chain = InverseChain([m for m in steps if m is not None]).to(device).eval()

    def _predict(self, run: RunContext, feats: Any, predicted: Any, source: str, module: nn.Module) -> Any:
        """The module's outputs over the training set, cached on disk under the run's checkpoints."""
        from probekit import FeatureCache, FeatureSet

        previous = getattr(predicted, "key", "cached")
        key = hashlib.sha256(f"{state_hash([module])}-{previous}".encode()).hexdigest()[:32]
        src = feats if predicted is None else predicted
        src_key = source if predicted is None else "predicted"

        def compute(wanted: Sequence[str]) -> Iterable[dict[str, Any]]:
            with torch.no_grad():
                for idx in torch.arange(len(feats)).split(max(self.batch_size, 256)):
                    x = src.batch(idx, names=[src_key])[src_key].to(run.device)
                    yield {"predicted": module(x)}

        cache = FeatureCache(run.checkpoint_dir / "chained")
        out = FeatureSet(cache.get({"predicted": key}, compute))
        out.key = key  # type: ignore[attr-defined]
        return out

    def _fit_end_to_end(self, run: RunContext, feats: Any) -> None:
        device = run.device
        sample_in = self._stats_sample(feats, ["input"])["input"]
        var = self._variance(sample_in)
        self.target_var["input"] = var
        stats_sample = self._stats_sample(feats, [s.name for s in self.sites])
        for depth in range(1, len(self.sites)):
            name = self.sites[depth].name
            steps = []
            for i in range(depth):
                m = self.build_step(i, f"e2e {name} {i}", device, run.seed)
                m.fit_statistics(stats_sample[self.sites[i + 1].name], stats_sample[self.sites[i].name])
                steps.append(m)
            chain = InverseChain(steps).to(device)
            tag = f"end-to-end {name}->input"

            def step(
                batch: dict[str, torch.Tensor],
                chain: InverseChain = chain,
                name: str = name,
                depth: int = depth,
            ) -> torch.Tensor:
                x, y = batch[name].to(device), batch["input"].to(device)
                return F.mse_loss(chain.reconstruct(x, depth), y) / var

            self.batch_size = resolve_batch_size(  # batch_size auto: see _fit_modular
                run, tag, self.batch_option,
                lambda b, name=name: step(feats.batch(torch.arange(b), names=[name, "input"])),
                modules=[chain], maximum=len(feats))
            n_batches = math.ceil(len(feats) / self.batch_size)
            trainer = self._trainer(run, {"chain": chain}, tag, f"e2e-{depth:02d}-{safe_name(name)}.pt")
            self.train_losses[name] = trainer.fit(
                lambda g, name=name: (feats.batch(idx, names=[name, "input"])
                                      for idx in rank_batches(len(feats), self.batch_size, g)),
                step,
                total=n_batches,
                sharded=True,
            )
            chain.eval()
            run.log(
                f"{tag}: {n_parameters(chain):,} parameters, final loss {self.train_losses[name][-1]:.4g}"
            )
            self.e2e[name] = chain

    # -- reconstruction --------------------------------------------------------------------
    def decoder_for(self, name: str) -> Any:
        """`f(states) -> model-ready input` that decodes states of the shape of layer `name`."""
        if self.mode == "modular":
            assert self.chain is not None
            depth = self.names.index(name) + 1
            return lambda x: self.chain.reconstruct(x, depth)  # type: ignore[union-attr]
        chain = self.e2e[name]
        depth = len(chain.steps)
        return lambda x: chain.reconstruct(x, depth)

    def to_image(self, run: RunContext, inputs: torch.Tensor) -> torch.Tensor:
        """Model-ready inputs (or reconstructions of them) -> images in [0, 1]."""
        return run.model.postprocess(inputs).clamp(0, 1)

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

    def evaluate(self, run: RunContext) -> dict[str, Any]:
        from probekit_inversion import report

        names = self.names
        test = run.features(names, "test", include_input=True)
        metrics = {name: self.metric_set(run) for name in names}
        module_loss: dict[str, float] = {}
        sums = {s.name: 0.0 for s in self.sites[1:]}
        shown: dict[str, list[torch.Tensor]] = {}
        n_show = min(self.figure_images, len(test))
        with torch.no_grad():
            for idx in torch.arange(len(test)).split(run.spec.data.batch_size if run.spec.data else 64):
                batch = test.batch(idx, device=run.device)
                target = self.to_image(run, batch["input"])
                keep = max(0, n_show - int(idx[0]))
                shown.setdefault("original", []).append(target[:keep].cpu())
                for name in names:
                    rec = self.to_image(run, self.decoder_for(name)(batch[name]))
                    for mname, metric in metrics[name].items():
                        self.update_metric(metric, mname, rec, target)
                    shown.setdefault(name, []).append(rec[:keep].cpu())
                if self.mode == "modular":
                    assert self.chain is not None
                    for i, step in enumerate(self.chain.steps):
                        src, tgt = self.sites[i + 1].name, self.sites[i].name
                        err = (
                            F.mse_loss(step(batch[src]), batch[tgt], reduction="sum") / batch[tgt][0].numel()
                        )
                        sums[src] += float(err)
        images = {k: torch.cat(v) for k, v in shown.items()}
        values = {name: {m: float(metric.compute()) for m, metric in metrics[name].items()} for name in names}
        if self.mode == "modular":
            module_loss = {
                name: sums[name] / len(test) / self.target_var[self.sites[i].name]
                for i, name in enumerate(names)
            }
        rows = [{"layer": n, "metric": m, "value": v} for n in names for m, v in values[n].items()]
        run.write_csv("results.csv", rows, ["layer", "metric", "value"])
        report.reconstructions_figure(run, images, names)
        report.error_vs_depth_figure(run, values, names, self.mode)
        results: dict[str, Any] = {
            m: {n: values[n][m] for n in names} for m in (values[names[0]] if names else {})
        }
        results["train_loss"] = {n: losses[-1] for n, losses in self.train_losses.items() if losses}
        if module_loss:
            results["module_test_loss"] = module_loss
        results["mode"] = self.mode
        extra = {}
        if "correlation" in self.analyses:
            from probekit_inversion.analyses import correlation

            extra["correlation"] = correlation(run, self, test)
        if "colour" in self.analyses:
            from probekit_inversion.analyses import colour

            extra["colour"] = colour(run, self)
        results.update(extra)
        report.add_report(run, self, values, module_loss)
        return _finite(results)


def _finite(value: Any) -> Any:
    """NaN / inf -> None, so that metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
