"""Analyses on trained inverse modules: layer correlation and colour robustness."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from probekit import RunContext, SpecError, num_examples, rgb_to_hsv

# -- layer correlation ------------------------------------------------------------------------------


def correlation(run: RunContext, probe: Any, test: Any) -> dict[str, Any]:
    """Decode layer j's test states with the chain built for layer k (same shapes); a depth x depth matrix.

    Writes `results_correlation.csv` (`layer,decoder,metric,value`: `layer` whose states are
    decoded, `decoder` whose chain decodes them) and `figures/correlation.png` (the MSE matrix).
    """
    from probekit_inversion.report import _plt

    names = probe.names
    shapes = {s.name: tuple(s.shape) for s in probe.sites}
    pairs = [(j, k) for j in names for k in names if shapes[j] == shapes[k]]
    metrics = {pair: probe.metric_set(run) for pair in pairs}
    bs = run.spec.data.batch_size if run.spec.data else 64
    with torch.no_grad():
        for idx in torch.arange(len(test)).split(bs):
            batch = test.batch(idx, device=run.device)
            target = probe.to_image(run, batch["input"])
            for j, k in pairs:
                rec = probe.to_image(run, probe.decoder_for(k)(batch[j]))
                for mname, metric in metrics[(j, k)].items():
                    probe.update_metric(metric, mname, rec, target)
    rows: list[dict[str, Any]] = []
    matrix: dict[str, dict[str, dict[str, float]]] = {}  # metric -> layer -> decoder -> value
    for (j, k), ms in metrics.items():
        for mname, metric in ms.items():
            value = float(metric.compute())
            rows.append({"layer": j, "decoder": k, "metric": mname, "value": value})
            matrix.setdefault(mname, {}).setdefault(j, {})[k] = value
    run.write_csv("results_correlation.csv", rows, ["layer", "decoder", "metric", "value"])
    shown = "mse" if "mse" in matrix else next(iter(matrix), None)
    if shown is not None:
        plt = _plt()
        grid = np.full((len(names), len(names)), np.nan)
        for a, j in enumerate(names):
            for b, k in enumerate(names):
                grid[a, b] = matrix[shown].get(j, {}).get(k, np.nan)
        fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(names), 0.8 + 0.6 * len(names)))
        im = ax.imshow(grid, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("decoded with the chain of")
        ax.set_ylabel("states of")
        for a in range(len(names)):
            for b in range(len(names)):
                if not np.isnan(grid[a, b]):
                    ax.text(b, a, f"{grid[a, b]:.3g}", ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(im, ax=ax, label=f"reconstruction {shown}")
        ax.set_title("Layer correlation (blank: shapes differ)", fontsize=9)
        fig.tight_layout()
        run.save_figure(fig, "correlation.png")
        run.add_report(
            "Layer correlation",
            "States of each layer (rows) decoded by the chain built for "
            "another layer (columns), where the shapes agree; the diagonal is the ordinary "
            f"reconstruction. Values: {shown} in [0, 1] image space.\n\n"
            "![correlation](figures/correlation.png)",
        )
    return {m: {j: dict(v) for j, v in by.items()} for m, by in matrix.items()}


# -- colour robustness ----------------------------------------------------------------------------

#: option name of the value in "name:value" perturbation entries
VALUE_OPTIONS = {"hue-set": "color", "hue-rotate": "degrees"}


def _parse(entry: str) -> tuple[str, dict[str, Any]]:
    name, _, value = entry.partition(":")
    if not value:
        return name, {}
    key = VALUE_OPTIONS.get(name)
    if key is None:
        raise SpecError(
            f"perturbation '{entry}': '{name}' takes no value here",
            path="probe.colour.perturbations",
            fix=f"Write it without ':{value}', or use one of {', '.join(VALUE_OPTIONS)} with a value.",
        )
    parsed: Any = float(value) if key == "degrees" else value
    return name, {key: parsed}


def colour_perturbations(run: RunContext, options: Any) -> dict[str, Callable[..., torch.Tensor]]:
    """The perturbations of the colour analysis, from the perturbation registry (clear error when missing)."""
    from probekit import get_plugin_manager

    if not get_plugin_manager().names("perturbations"):
        raise SpecError(
            "the colour analysis needs hue and grayscale perturbations, but no perturbations are installed",
            path="probe.analyses",
            fix="They are provided by probekit-perturb: pip install probekit-perturb "
            "(or drop `colour` from probe.analyses).",
        )
    out = {}
    for entry in options.perturbations:
        name, opts = _parse(entry)
        try:
            out[entry] = run.perturbation(name, **opts)
        except SpecError as exc:
            raise SpecError(
                f"colour analysis: {exc.message}",
                path="probe.colour.perturbations",
                fix=exc.fix or "Install probekit-perturb.",
            ) from None
    return out


def hue_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Circular distance between hues in [0, 1), in degrees (0..180)."""
    d = (a - b).abs() % 1.0
    return torch.minimum(d, 1 - d) * 360.0


def _base_dataset(ds: Any) -> tuple[Any, list[int]]:
    """Unwrap torch Subsets: (underlying dataset, indices into it)."""
    from torch.utils.data import Subset

    idx = list(range(len(ds)))
    while isinstance(ds, Subset):
        idx = [int(ds.indices[i]) for i in idx]
        ds = ds.dataset
    return ds, idx


def _data_mask(ds: Any, index: int) -> torch.Tensor | None:
    if callable(getattr(ds, "mask", None)):
        return torch.as_tensor(ds.mask(index))
    masks = getattr(ds, "masks", None)
    if masks is not None:
        return torch.as_tensor(masks[index])
    return None


def _coco_masks(options: Any, ds: Any, indices: list[int], hw: tuple[int, int]) -> list[torch.Tensor | None]:
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise SpecError(
            "COCO instance masks need pycocotools",
            path="probe.colour.coco_annotations",
            fix="pip install pycocotools (or pip install 'probekit-inversion[coco]').",
        ) from None
    files = getattr(ds, "files", None)
    if files is None:
        raise SpecError(
            "COCO masks are matched to images by file name, but this data source has no files",
            path="probe.colour.coco_annotations",
            fix="Use `data: {type: folder, root: COCO_IMAGES}`.",
        )
    path = Path(options.coco_annotations)
    if not path.exists():
        raise SpecError(
            f"file not found: {path}",
            path="probe.colour.coco_annotations",
            fix="Give the instances_*.json of the images' split.",
        )
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(str(path))
    by_file = {img["file_name"]: img_id for img_id, img in coco.imgs.items()}
    cats = None
    if options.category:
        cats = coco.getCatIds(catNms=[options.category])
        if not cats:
            names = sorted(c["name"] for c in coco.cats.values())
            raise SpecError(
                f"no COCO category '{options.category}'",
                path="probe.colour.category",
                fix=f"Categories: {', '.join(names[:80])}.",
            )
    out: list[torch.Tensor | None] = []
    for i in indices:
        img_id = by_file.get(Path(files[i]).name)
        if img_id is None:
            out.append(None)
            continue
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id], catIds=cats or [], iscrowd=None))
        if not anns:
            out.append(None)
            continue
        m = np.zeros((coco.imgs[img_id]["height"], coco.imgs[img_id]["width"]), dtype=bool)
        for ann in anns:
            m |= coco.annToMask(ann).astype(bool)
        out.append(torch.from_numpy(m))
    return out


def colour_masks(test: Dataset, options: Any, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Images of the test split `test` in [0, 1], their masks (N1HW, bool) and where the masks came from;
    empty masks skipped."""
    base, indices = _base_dataset(test)
    choice = options.mask
    if choice == "auto":
        if options.coco_annotations:
            choice = "coco"
        elif indices and _data_mask(base, indices[0]) is not None:
            choice = "data"
        else:
            choice = "box"
    images, masks = [], []
    coco = _coco_masks(options, base, indices, (0, 0)) if choice == "coco" else None
    for pos in range(num_examples(test)):
        image = test[pos][0]
        hw = tuple(image.shape[-2:])
        if choice == "coco":
            m = coco[pos] if coco is not None else None
        elif choice == "data":
            m = _data_mask(base, indices[pos])
            if m is None:
                raise SpecError(
                    "colour.mask is 'data', but the data source provides no masks",
                    path="probe.colour.mask",
                    fix="Use `mask: box` or COCO annotations.",
                )
        else:
            x0, y0, x1, y1 = options.box
            m = torch.zeros(hw, dtype=torch.bool)
            m[
                int(y0 * hw[0]) : max(int(y0 * hw[0]) + 1, int(math.ceil(y1 * hw[0]))),
                int(x0 * hw[1]) : max(int(x0 * hw[1]) + 1, int(math.ceil(x1 * hw[1]))),
            ] = True
        if m is None:
            continue
        m = m.reshape(1, 1, *m.shape[-2:]).float()
        if tuple(m.shape[-2:]) != hw:
            m = F.interpolate(m, size=hw, mode="nearest")
        if m.sum() == 0:
            continue
        images.append(image)
        masks.append(m[0] > 0.5)
        if len(images) >= n:
            break
    if not images:
        raise SpecError(
            f"no test image has a non-empty {choice} mask",
            path="probe.colour",
            fix="Check the category / annotations, or use `mask: box`.",
        )
    return torch.stack(images), torch.stack(masks), choice


def colour(run: RunContext, probe: Any) -> dict[str, Any]:
    """Per depth, how much of a colour change in a masked region survives reconstruction.

    Metrics (`results_colour.csv`: `perturbation,layer,metric,value`), inside the mask:

    - `change_kept`: regression slope of the reconstruction's change on the input's change,
      sum(d_rec * d_in) / sum(d_in ** 2) with d = perturbed - clean (1: the whole change survives,
      0: the reconstruction ignores it);
    - `hue_error`: circular hue distance (degrees) between the perturbed input and the
      reconstruction of it, over pixels saturated in both (NaN for grayscale);
    - `hue_error_to_original`: the same distance to the clean input (smaller than `hue_error`
      when the reconstruction reverts to the original colour);
    - `saturation_error`: mean absolute saturation difference to the perturbed input;
    - layer `model`: `prediction_changed` (share of top-1 predictions that change) and
      `probability_shift` (mean total-variation distance between the softmax outputs).
    """
    from probekit_inversion.report import _plt, image_grid

    model = run.require_model()
    perturbations = colour_perturbations(run, probe.colour)
    images, masks, source = colour_masks(run.require_data().test, probe.colour, probe.colour.images)
    if images.shape[1] != 3:
        raise SpecError(
            f"the colour analysis needs RGB images; the data has {images.shape[1]} channel(s)",
            path="probe.analyses",
            fix="Use RGB data (e.g. photos, a COCO folder) or drop `colour`.",
        )
    names = probe.names
    g = run.generator("colour")
    bs = run.spec.data.batch_size if run.spec.data else 64
    opts = probe.colour
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    examples: dict[str, list[torch.Tensor]] = {}

    def decode_all(x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, Any]:
        inputs = model.preprocess(x.to(run.device))
        output, states = model.capture(inputs, names)
        recs = {n: probe.to_image(run, probe.decoder_for(n)(states[n])) for n in names}
        return recs, probe.to_image(run, inputs), output

    # the figure shows the most colourful image: the highest mean saturation inside its region
    saturation = (rgb_to_hsv(images)[:, 1:2] * masks).flatten(1).sum(1) / masks.flatten(1).sum(1).clamp_min(1)
    shown_index = int(saturation.argmax())
    with torch.no_grad():
        clean: list[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]] = []
        for idx in torch.arange(len(images)).split(bs):
            recs, shown, output = decode_all(images[idx])
            clean.append((recs, shown, _logits(model, output)))
        for entry, perturb in perturbations.items():
            keys = ("num", "den", "hue", "hue_n", "hue0", "sat", "sat_n")
            acc: dict[str, dict[str, float]] = {n: dict.fromkeys(keys, 0.0) for n in names}
            changed = shift = 0.0
            total = 0
            own = {"hue": 0.0, "n": 0.0}  # the input's own hue change (perturbed vs clean), the reference
            for b, idx in enumerate(torch.arange(len(images)).split(bs)):
                x, m = images[idx].to(run.device), masks[idx].to(run.device)
                xp = perturb(x, mask=m, generator=g).clamp(0, 1)
                recs_p, shown_p, output_p = decode_all(xp)
                recs_c, shown_c, logits_c = clean[b]
                mm = F.interpolate(m.float(), size=shown_p.shape[-2:], mode="nearest") > 0.5
                hsv_p, hsv_c = rgb_to_hsv(shown_p), rgb_to_hsv(shown_c)
                d_in = (shown_p - shown_c) * mm
                both = mm[:, 0] & (hsv_p[:, 1] >= opts.min_saturation) & (hsv_c[:, 1] >= opts.min_saturation)
                own["hue"] += float(hue_distance(hsv_p[:, 0], hsv_c[:, 0])[both].sum())
                own["n"] += float(both.sum())
                for n in names:
                    d_rec = (recs_p[n] - recs_c[n]) * mm
                    a = acc[n]
                    a["num"] += float((d_rec * d_in).sum())
                    a["den"] += float((d_in * d_in).sum())
                    hsv_r = rgb_to_hsv(recs_p[n])
                    sat = (
                        mm[:, 0] & (hsv_p[:, 1] >= opts.min_saturation) & (hsv_r[:, 1] >= opts.min_saturation)
                    )
                    a["hue"] += float(hue_distance(hsv_p[:, 0], hsv_r[:, 0])[sat].sum())
                    a["hue0"] += float(hue_distance(hsv_c[:, 0], hsv_r[:, 0])[sat].sum())
                    a["hue_n"] += float(sat.sum())
                    a["sat"] += float((hsv_p[:, 1] - hsv_r[:, 1]).abs()[mm[:, 0]].sum())
                    a["sat_n"] += float(mm[:, 0].sum())
                logits_p = _logits(model, output_p)
                if logits_c is not None and logits_p is not None:
                    changed += float((logits_c.argmax(-1) != logits_p.argmax(-1)).float().mean()) * len(idx)
                    tv = 0.5 * (logits_c.softmax(-1) - logits_p.softmax(-1)).abs().sum(-1)
                    shift += float(tv.mean()) * len(idx)
                total += len(idx)
                if int(idx[0]) <= shown_index <= int(idx[-1]):
                    j = shown_index - int(idx[0])
                    examples[entry] = [shown_p[j].cpu()] + [recs_p[n][j].cpu() for n in names]
                    examples.setdefault("clean", [shown_c[j].cpu()] + [recs_c[n][j].cpu() for n in names])
            res: dict[str, Any] = {}
            for n in names:
                a = acc[n]
                hue_n = a["hue_n"]
                values = {
                    "change_kept": a["num"] / a["den"] if a["den"] > 0 else float("nan"),
                    "hue_error": a["hue"] / hue_n if hue_n else float("nan"),
                    "hue_error_to_original": a["hue0"] / hue_n if hue_n else float("nan"),
                    "saturation_error": a["sat"] / a["sat_n"] if a["sat_n"] else float("nan"),
                }
                res[n] = values
                rows += [
                    {"perturbation": entry, "layer": n, "metric": k, "value": v} for k, v in values.items()
                ]
            res["input"] = {"hue_change": own["hue"] / own["n"] if own["n"] else float("nan")}
            rows.append({"perturbation": entry, "layer": "input", "metric": "hue_change",
                         "value": res["input"]["hue_change"]})
            if clean[0][2] is not None:
                res["model"] = {"prediction_changed": changed / total, "probability_shift": shift / total}
                rows += [
                    {"perturbation": entry, "layer": "model", "metric": k, "value": v}
                    for k, v in res["model"].items()
                ]
            results[entry] = res
    run.write_csv("results_colour.csv", rows, ["perturbation", "layer", "metric", "value"])
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    labels = [probe.label(n) for n in names]
    for k, entry in enumerate(perturbations):
        colour_k = f"C{k}"
        axes[0].plot(range(len(names)), [results[entry][n]["change_kept"] for n in names], "o-", color=colour_k,
                     label=entry)
        axes[1].plot(range(len(names)), [results[entry][n]["hue_error"] for n in names], "o-", color=colour_k,
                     label=entry)
        own_change = results[entry]["input"]["hue_change"]
        if own_change == own_change:  # NaN for grayscale: no hue
            axes[1].axhline(own_change, color=colour_k, ls=":", lw=1)
    axes[0].axhline(1.0, color="0.5", ls=":", lw=1)
    axes[1].plot([], [], color="0.4", ls=":", label="the input's own hue change")
    axes[0].set_ylabel("colour change kept (slope; 1 = all, 0 = none)")
    axes[1].set_ylabel("hue error to the perturbed input (degrees)")
    axes[1].set_ylim(0, 180)
    for ax in axes:
        ax.set_xticks(range(len(names)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("reconstructed from")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle("Colour perturbations in the reconstructions (dotted: the perturbation's hue change in the "
                 "input; a reconstruction that ignores the change reaches it)", fontsize=8)
    fig.tight_layout()
    run.save_figure(fig, "colour_vs_depth.png")
    order = ["clean", *perturbations]
    fig = image_grid(
        [examples[k] for k in order],
        ["input", *labels],
        row_titles=order,
        title="Colour perturbations and their reconstructions",
    )
    run.save_figure(fig, "colour_reconstructions.png")
    table = [
        "| perturbation | " + " | ".join(f"`{n}`" for n in labels) + " | prediction changed |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    hue_table = [
        "| perturbation | input's own hue change | " + " | ".join(f"`{n}`" for n in labels) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for entry in perturbations:
        pc = results[entry].get("model", {}).get("prediction_changed", float("nan"))
        table.append(
            f"| {entry} | "
            + " | ".join(f"{results[entry][n]['change_kept']:.3f}" for n in names)
            + f" | {pc:.3f} |"
        )
        hue_table.append(
            f"| {entry} | {results[entry]['input']['hue_change']:.1f} | "
            + " | ".join(f"{results[entry][n]['hue_error']:.1f}" for n in names) + " |"
        )
    run.add_report(
        "Colour robustness",
        "\n".join(
            [
                f"{len(images)} test images, region from {source} masks. Cells: share of the colour "
                "change that survives in the reconstruction from each depth (`change_kept`); the last "
                "column is the share of the model's top-1 predictions that change.",
                "",
                *table,
                "",
                "Hue error (degrees) between each perturbed input and its reconstruction, beside the "
                "hue change the perturbation made in the input: a reconstruction that keeps the new "
                "colour stays well below it, one that paints the old colour back reaches it.",
                "",
                *hue_table,
                "",
                "![colour vs depth](figures/colour_vs_depth.png)",
                "",
                "![colour reconstructions](figures/colour_reconstructions.png)",
            ]
        ),
    )
    # metrics.json keeps the headline (change kept per depth, prediction change); the CSV has every metric
    summary: dict[str, Any] = {}
    for entry, res in results.items():
        summary[entry] = {n: res[n]["change_kept"] for n in names}
        summary[entry]["input_hue_change"] = res["input"]["hue_change"]
        if "model" in res:
            summary[entry]["prediction_changed"] = res["model"]["prediction_changed"]
    return summary


def _logits(model: Any, output: Any) -> torch.Tensor | None:
    try:
        return model.logits(output).float()
    except (TypeError, AttributeError, KeyError):
        return None
