"""The `robustness` probe: how far each layer's representation and the output move under perturbations.

For each perturbation, the same examples are run clean and perturbed through the
frozen model; per layer the clean and perturbed states are compared (linear CKA,
cosine), at the output the predictions (flip rate, logit distance). The spec's
`metrics:` (e.g. `lpips`, `ssim`) measure how large each perturbation is in
image space (layer `input`). With `attribution:`, captum's infidelity and
sensitivity_max of an attribution method are scored under each perturbation.
Everything goes into `results.csv` (`perturbation,layer,metric,value`), one
heatmap per metric in `figures/` and a report section. Each perturbation's
results are checkpointed, so `--resume` continues after the last finished one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from probekit import CorruptCheckpointError, Probe, RunContext, num_examples, read_checked_json, write_checked_json
from probekit_perturb.options import PerturbationSpec
from probekit_perturb.perturbations import InRegion
from probekit_perturb.representation import CKA, Cosine, FlipRate, LogitDistance

COLUMNS = ("perturbation", "layer", "metric", "value")
_LAYER_METRICS = {"cka": CKA, "cosine": Cosine}
_OUTPUT_METRICS = {"flip_rate": FlipRate, "logit_distance": LogitDistance}


def pool(x: torch.Tensor, how: str) -> torch.Tensor:
    """States -> (N, features): flattened, or averaged over tokens (N, T, D) / positions (N, C, H, W)."""
    if how == "mean" and x.dim() == 3:
        return x.mean(1)
    if how == "mean" and x.dim() == 4:
        return x.mean((2, 3))
    return x.reshape(x.shape[0], -1)


class RobustnessProbe(Probe):
    """Options: see `probekit_perturb.RobustnessOptions`."""

    def __init__(
        self,
        layers: list[str] | str,
        perturbations: list[dict[str, Any]],
        metrics: list[str] = ("cka", "cosine"),  # type: ignore[assignment]
        output_metrics: list[str] = ("flip_rate", "logit_distance"),  # type: ignore[assignment]
        split: str = "test",
        limit: int | None = 512,
        pool: str = "flatten",
        attribution: dict[str, Any] | None = None,
        show: int = 8,
    ):
        self.layer_names = layers
        self.perturbations = [PerturbationSpec.model_validate(p) for p in perturbations]
        labels = [p.label() for p in self.perturbations]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"robustness: perturbations {dupes} appear twice; give them distinct `name:`s")
        self.labels = labels
        self.metric_names = list(metrics)
        self.output_metric_names = list(output_metrics)
        self.split, self.limit, self.pool, self.show = split, limit, pool, show
        self.attribution = attribution

    # -- data -------------------------------------------------------------------------------
    def _examples(self, run: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        data = run.require_data()
        dataset = data.train if self.split == "train" else data.test
        n = num_examples(dataset) if self.limit is None else min(self.limit, num_examples(dataset))
        images, labels = [], []
        for x, y in run.loader(torch.utils.data.Subset(dataset, range(n))):
            images.append(x)
            labels.append(torch.as_tensor(y))
        return torch.cat(images), torch.cat(labels)

    def _states(self, run: RunContext, images: torch.Tensor, layers: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        model = run.require_model()
        with torch.no_grad():
            output, states = model.capture(model.preprocess(images.to(run.device)), layers)
        return model.logits(output), {k: pool(v, self.pool) for k, v in states.items()}

    # -- the probe -------------------------------------------------------------------------------
    @staticmethod
    def _saved_rows(run: RunContext, done: Path, label: str) -> list[dict[str, Any]] | None:
        """The rows of perturbation `label` checkpointed in `done`, or None to compute them (no file
        yet, or a damaged one: logged)."""
        try:
            saved = read_checked_json(done)
        except FileNotFoundError:
            return None
        except CorruptCheckpointError as exc:
            run.log(f"robustness: {exc}; computing '{label}' again")
            return None
        if saved.get("perturbation") != label or not isinstance(saved.get("rows"), list):
            run.log(f"robustness: {done.name} holds another perturbation; computing '{label}' again")
            return None
        return saved["rows"]

    def evaluate(self, run: RunContext) -> dict[str, Any]:
        from probekit import create_perturbation

        run.require_model().model.eval()
        layers = run.require_model().layer_names(self.layer_names)
        images, labels = self._examples(run)
        batch = run.spec.data.batch_size if run.spec.data else 64
        batches = [slice(i, i + batch) for i in range(0, len(images), batch)]
        run.log(
            f"robustness: {len(images)} {self.split} examples, {len(layers)} layers, "
            f"{len(self.perturbations)} perturbations"
        )
        clean = [self._states(run, images[b], layers) for b in batches]
        image_metrics = run.metrics()

        rows: list[dict[str, Any]] = []
        shown: dict[str, torch.Tensor] = {}
        for i, (spec, label) in enumerate(run.progress(list(zip(self.perturbations, self.labels)),
                                                       desc="robustness: perturbations")):
            opts = spec.options()
            perturb = create_perturbation(spec.type, **opts)
            if spec.region is not None:
                perturb = InRegion(perturb, spec.region)
            done = run.checkpoint_dir / f"robustness-{i}.json"
            generator = run.generator(f"robustness:{label}")
            saved = self._saved_rows(run, done, label) if run.resume else None
            if saved is not None:
                rows += saved
                run.log(f"robustness: '{label}' resumed from its checkpoint")
                if self.show:
                    first = perturb(images[batches[0]].to(run.device), generator=generator)
                    shown[label] = first[: self.show].cpu()
                continue
            layer_metrics = {(name, m): _LAYER_METRICS[m]() for name in [*layers, "output"] for m in self.metric_names}
            out_metrics = {m: _OUTPUT_METRICS[m]() for m in self.output_metric_names}
            for m in image_metrics.values():
                m.reset()
            for b, (clean_logits, clean_states) in zip(batches, clean):
                x = images[b].to(run.device)
                xp = perturb(x, generator=generator)
                if self.show and b.start == 0:
                    shown[label] = xp[: self.show].cpu()
                logits, states = self._states(run, xp, layers)
                for (layer, _), metric in layer_metrics.items():
                    if layer == "output":
                        metric.update(logits, clean_logits)
                    else:
                        metric.update(states[layer], clean_states[layer])
                for metric in out_metrics.values():
                    metric.update(logits, clean_logits)
                for metric in image_metrics.values():
                    metric.update(xp, x)
            new = [
                {"perturbation": label, "layer": layer, "metric": m, "value": metric.compute()}
                for (layer, m), metric in layer_metrics.items()
            ]
            new += [
                {"perturbation": label, "layer": "output", "metric": m, "value": metric.compute()}
                for m, metric in out_metrics.items()
            ]
            new += [
                {"perturbation": label, "layer": "input", "metric": name, "value": metric.compute()}
                for name, metric in image_metrics.items()
            ]
            if self.attribution is not None:
                new += self._attribution_rows(run, perturb, label, images, labels)
            write_checked_json(done, {"perturbation": label, "rows": new})
            rows += new
            summary = ", ".join(
                f"{r['layer']}/{r['metric']} {r['value']:.3g}"
                for r in new
                if r["layer"] in ("output", "input") or r["layer"] == layers[-1]
            )
            run.log(f"robustness: '{label}': {summary}")

        run.write_csv("results.csv", rows, COLUMNS)
        self._figures(run, rows, layers, images[: self.show], shown)
        return self._results(rows, len(images))

    def _attribution_rows(
        self, run: RunContext, perturb: Any, label: str, images: torch.Tensor, labels: torch.Tensor
    ) -> list[dict[str, Any]]:
        from probekit_perturb.attribution import Attributor, infidelity_score, sensitivity_score

        opts = self.attribution or {}
        attributor = Attributor(run.model, opts["method"], layer=opts.get("layer"), **opts.get("method_options", {}))
        n = min(opts["limit"], len(images))
        x = images[:n].to(run.device)
        y = labels[:n].to(run.device)
        layer = opts.get("layer") if attributor.method == "grad-cam" else "input"
        clean_attr = attributor.attribute(x, y)
        if not bool(clean_attr.abs().sum() > 0):
            run.log(
                f"robustness: warning: {attributor.method} attributions of the clean images are all zero"
                + (
                    f"; the output may not depend on the patch tokens of layer '{layer}' (e.g. the last "
                    "block of a class-token ViT): pick an earlier layer"
                    if layer != "input"
                    else ""
                )
            )
        rows = []
        scores = {"infidelity": infidelity_score, "sensitivity": sensitivity_score}
        with torch.enable_grad():
            for name in opts["metrics"]:
                g = run.generator(f"robustness:{label}:{name}")
                extra = {"normalize": opts.get("normalize", False)} if name == "infidelity" else {}
                n_samples = opts["n_perturb_samples"]
                values = scores[name](attributor, x, y, perturb, n_perturb_samples=n_samples, generator=g, **extra)
                rows.append(
                    {
                        "perturbation": label,
                        "layer": layer,
                        "metric": f"{name}:{attributor.method}",
                        "value": float(values.double().mean()),
                    }
                )
        return rows

    # -- outputs ---------------------------------------------------------------------------------
    def _results(self, rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for r in rows:
            table.setdefault(r["perturbation"], {}).setdefault(r["layer"], {})[r["metric"]] = r["value"]
        return {"examples": n, "robustness": table}

    def _figures(
        self,
        run: RunContext,
        rows: list[dict[str, Any]],
        layers: list[str],
        clean: torch.Tensor,
        shown: dict[str, torch.Tensor],
    ) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        metrics = list(dict.fromkeys(r["metric"] for r in rows))
        sections = []
        for metric in metrics:
            sel = [r for r in rows if r["metric"] == metric]
            cols = [c for c in [*layers, "output", "input"] if any(r["layer"] == c for r in sel)]
            cols += [c for c in dict.fromkeys(r["layer"] for r in sel) if c not in cols]
            values = torch.full((len(self.labels), len(cols)), float("nan"))
            for r in sel:
                values[self.labels.index(r["perturbation"]), cols.index(r["layer"])] = r["value"]
            fig, ax = plt.subplots(figsize=(1.1 + 0.9 * len(cols), 0.9 + 0.45 * len(self.labels)))
            similarity = metric in ("cka", "cosine")
            im = ax.imshow(
                values.numpy(),
                cmap="viridis" if similarity else "magma_r",
                aspect="auto",
                vmin=0.0 if similarity else None,
                vmax=1.0 if similarity else None,
            )
            ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
            ax.set_yticks(range(len(self.labels)), self.labels)
            finite = values[torch.isfinite(values)]
            mid = float(finite.mean()) if finite.numel() else 0.0
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    v = float(values[i, j])
                    if v == v:
                        dark = (v > mid) if similarity else (v < mid)
                        ax.text(
                            j,
                            i,
                            f"{v:.2f}" if abs(v) < 100 else f"{v:.3g}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="black" if dark else "white",
                        )
            ax.set_title(f"{metric}: perturbed vs clean" + (" (1 = unchanged)" if similarity else ""))
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            safe = metric.replace(":", "-").replace("/", "-")
            run.save_figure(fig, f"robustness-{safe}.png")
            header = "| perturbation | " + " | ".join(cols) + " |"
            lines = [header, "|---" * (len(cols) + 1) + "|"]
            for i, label in enumerate(self.labels):
                cells = [f"{float(v):.4g}" if float(v) == float(v) else "" for v in values[i]]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            sections.append(f"**{metric}**\n\n" + "\n".join(lines) + f"\n\n![{metric}](figures/robustness-{safe}.png)")
        if shown and len(clean):
            self._example_grid(run, clean, shown, plt)
            sections.append("Examples (top row clean):\n\n![perturbations](figures/perturbations.png)")
        run.add_report(
            "Robustness to input perturbations",
            "Per layer, clean and perturbed states of the same examples compared (CKA, cosine: 1 = "
            "unchanged); at the output, the share of changed predictions and the logit distance; at "
            "the input, the spec's image metrics between perturbed and clean images.\n\n" + "\n\n".join(sections),
        )

    def _example_grid(self, run: RunContext, clean: torch.Tensor, shown: dict[str, torch.Tensor], plt: Any) -> None:
        rows = [("clean", clean.cpu())] + [(k, v.cpu()) for k, v in shown.items()]
        n = len(clean)
        fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.2, 1.1 * len(rows)), squeeze=False)
        for i, (label, imgs) in enumerate(rows):
            for j in range(n):
                ax = axes[i][j]
                img = imgs[j].clamp(0, 1)
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img.permute(1, 2, 0).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        run.save_figure(fig, "perturbations.png")
