"""`probekit compare A B [C ...]`: the results of several runs side by side.

Every number of each run's metrics.json, aligned by key (natural order: the model's layer order,
then numbers as numbers), with each run's difference from the first; the differences between
their resolved specs as a unified diff; a warning when the runs probe differently or use other
data (their numbers then measure different things); as text, Markdown or HTML, and optionally a
CSV table and a figure that overlays the runs' main curves (a metric over the layers).
"""

from __future__ import annotations

import difflib
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probekit._errors import SpecError, display_path
from probekit._report import _is_interval, flatten, fmt, natural_sorted, rounded, sort_key

FORMATS = ("text", "md", "html")


@dataclass
class RunResults:
    """One run directory as compare reads it."""

    folder: Path
    name: str
    values: dict[str, Any]  # flat key -> number, interval dict or text
    spec: dict[str, Any]  # the resolved spec, without versions
    spec_text: str  # its YAML, without the versions header
    layers: list[str] = field(default_factory=list)
    label: str = ""


def load_run(folder: str | Path) -> RunResults:
    """Read a finished run directory (a `SpecError` for a folder that is none)."""
    import yaml

    folder = Path(folder)
    path = folder / "metrics.json"
    if not path.is_file():
        raise SpecError(f"{display_path(folder)} has no metrics.json", path="RUN_DIR",
                        fix="Give directories of finished runs.")
    try:
        metrics = json.loads(path.read_text())
    except ValueError as exc:
        raise SpecError(f"{display_path(path)} is not JSON ({exc})", path="RUN_DIR",
                        fix="Regenerate it by finishing the run (probekit run --resume).") from None
    shown = {k: v for k, v in metrics.items() if k not in ("provenance", "per_seed")}
    spec: dict[str, Any] = {}
    spec_text = ""
    if (folder / "spec.yaml").is_file():
        spec_text = "".join(line for line in (folder / "spec.yaml").read_text().splitlines(keepends=True)
                            if not line.startswith("#"))
        loaded = yaml.safe_load(spec_text) or {}
        spec = loaded if isinstance(loaded, dict) else {}
        spec.pop("versions", None)
        spec_text = yaml.safe_dump(spec, sort_keys=False)
    layers: list[str] = []
    if (folder / "report.json").is_file():
        try:
            layers = list(json.loads((folder / "report.json").read_text()).get("layers") or [])
        except ValueError:
            layers = []
    name = str(spec.get("name") or folder.resolve().name)
    return RunResults(folder, name, dict(flatten(shown, intervals=True)), spec, spec_text, layers)


def _flat_spec(spec: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in flatten(spec):
        out[key] = json.dumps(value) if not isinstance(value, str) else value
    for key, value in spec.items():  # lists (layers, metrics) as one value
        if isinstance(value, list):
            out[key] = json.dumps(value)
    return out


def label_runs(runs: list[RunResults]) -> None:
    """Label each run by its spec's name; runs of the same name by what differs in their specs
    (`digits (probe.epochs=4)`), else by their folder."""
    for run in runs:
        run.label = run.name
    by_name: dict[str, list[RunResults]] = {}
    for run in runs:
        by_name.setdefault(run.name, []).append(run)
    for group in by_name.values():
        if len(group) < 2:
            continue
        flats = [_flat_spec(r.spec) for r in group]
        keys = sorted({k for f in flats for k in f if len({g.get(k) for g in flats}) > 1} - {"name"},
                      key=sort_key)
        for run, flat in zip(group, flats):
            diff = [f"{k}={flat.get(k, '–')}" for k in keys[:2]] + (["..."] if len(keys) > 2 else [])
            run.label = f"{run.name} ({', '.join(diff)})" if diff else f"{run.name} ({run.folder.name})"
    seen: dict[str, int] = {}
    for run in runs:  # still the same (same spec twice): number them
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label += f" #{seen[run.label]}"


def _section(spec: dict[str, Any], key: str) -> Any:
    value = spec.get(key)
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in ("batch_size",)}  # batch size changes no result
    return value


def warnings_for(runs: list[RunResults]) -> list[str]:
    """Why the runs' numbers may not be comparable: other probes, other data."""
    out = []
    for what, key in (("probe type", "probe"), ("data", "data")):
        values = [_section(r.spec, key) for r in runs]
        if key == "probe":
            values = [v.get("type") if isinstance(v, dict) else v for v in values]
        if any(v != values[0] for v in values[1:]):
            shown = "; ".join(f"{r.label}: {_brief(v)}" for r, v in zip(runs, values))
            out.append(f"the runs use different {what} ({shown}): their numbers may measure different things")
    if not all(r.spec for r in runs):
        missing = [r.label for r in runs if not r.spec]
        out.append(f"no spec.yaml in {', '.join(missing)}: cannot check that the runs are comparable")
    return out


def _brief(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def spec_diffs(runs: list[RunResults]) -> list[tuple[str, str, str]]:
    """(label of the first run, label of another, unified diff of their resolved specs) for each
    other run; an empty diff when the specs are the same."""
    first = runs[0]
    out = []
    for other in runs[1:]:
        diff = difflib.unified_diff(first.spec_text.splitlines(), other.spec_text.splitlines(),
                                    fromfile=first.label, tofile=other.label, lineterm="", n=1)
        out.append((first.label, other.label, "\n".join(diff)))
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if _is_interval(value) and isinstance(value.get("mean"), (int, float)):
        return float(value["mean"])
    return None


def _delta(base: Any, value: Any) -> str:
    a, b = _number(base), _number(value)
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return ""
    if a == b:
        return "0"
    text = rounded(b - a)
    text = text if text.startswith("-") else "+" + text
    if a != 0:
        text += f" ({(b - a) / abs(a):+.0%})"
    return text


def table(runs: list[RunResults]) -> tuple[list[str], list[list[str]]]:
    """The header and rows: result, the first run's value, then each other run's value and its
    difference from the first."""
    layers = next((r.layers for r in runs if r.layers), [])
    keys = natural_sorted({k for r in runs for k in r.values}, layers)
    header = ["result", runs[0].label]
    for r in runs[1:]:
        header += [r.label, "Δ"]
    rows = []
    for k in keys:
        base = runs[0].values.get(k)
        row = [k, fmt(base) if k in runs[0].values else "–"]
        for r in runs[1:]:
            row += [fmt(r.values[k]) if k in r.values else "–", _delta(base, r.values.get(k))]
        rows.append(row)
    return header, rows


def compare(run_dirs: list[Path], output: str | None = None, *, format: str = "text") -> str:
    """The comparison of `run_dirs` as text, Markdown (`md`) or HTML; with `output` (a path stem)
    also STEM.csv (the table), STEM.md, STEM.html and STEM.png (the main curves)."""
    if format not in FORMATS:
        raise SpecError(f"unknown format '{format}'", path="--format", fix=f"Use one of {', '.join(FORMATS)}.")
    runs = [load_run(d) for d in run_dirs]
    label_runs(runs)
    header, rows = table(runs)
    warnings = warnings_for(runs)
    diffs = spec_diffs(runs)
    written: list[str] = []
    figure = None
    if output:
        figure = _figure(runs, f"{output}.png")
        _write_csv(f"{output}.csv", header, rows)
        Path(f"{output}.md").write_text(_markdown(runs, header, rows, warnings, diffs, figure))
        Path(f"{output}.html").write_text(_html(runs, header, rows, warnings, diffs, figure))
        written = [f"{output}.{ext}" for ext in ("csv", "md", "html")] + ([figure] if figure else [])
    if format == "md":
        text = _markdown(runs, header, rows, warnings, diffs, figure)
    elif format == "html":
        text = _html(runs, header, rows, warnings, diffs, figure)
    else:
        text = _text(runs, header, rows, warnings, diffs)
    if written:
        text += f"\n\nwrote {', '.join(display_path(Path(w).resolve()) for w in written)}"
    return text


def _text(runs: list[RunResults], header: list[str], rows: list[list[str]], warnings: list[str],
          diffs: list[tuple[str, str, str]]) -> str:
    lines = [f"warning: {w}" for w in warnings]
    lines += ["runs: " + "; ".join(f"{r.label} = {display_path(r.folder.resolve())}" for r in runs), ""]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    for a, b, diff in diffs:
        lines += ["", f"spec differences, {a} -> {b}:" if diff else f"specs of {a} and {b}: the same"]
        lines += diff.splitlines()[2:] if diff else []  # the ---/+++ header names were just said
    return "\n".join(lines)


def _markdown(runs: list[RunResults], header: list[str], rows: list[list[str]], warnings: list[str],
              diffs: list[tuple[str, str, str]], figure: str | None) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    md = ["# probekit compare", ""]
    md += [f"- **Warning:** {w}" for w in warnings] + ([""] if warnings else [])
    md += ["| run | directory |", "|---|---|"]
    md += [f"| {cell(r.label)} | `{display_path(r.folder.resolve())}` |" for r in runs] + [""]
    md += ["## Results", "", f"Δ: the difference from {cell(runs[0].label)} (relative in parentheses).", ""]
    md += ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows] + [""]
    if figure:
        md += [f"![main curves]({Path(figure).name})", ""]
    md += ["## Spec differences", ""]
    for a, b, diff in diffs:
        md += [f"{a} → {b}:", "", "```diff", diff, "```", ""] if diff else [f"{a} and {b}: the same spec.", ""]
    return "\n".join(md)


def _html(runs: list[RunResults], header: list[str], rows: list[list[str]], warnings: list[str],
          diffs: list[tuple[str, str, str]], figure: str | None) -> str:
    import base64

    e = html.escape
    out = ["<h1>probekit compare</h1>"]
    out += [f"<p class='warn'><b>Warning:</b> {e(w)}</p>" for w in warnings]
    out.append("<table><tr><th>run</th><th>directory</th></tr>" + "".join(
        f"<tr><td>{e(r.label)}</td><td><code>{e(display_path(r.folder.resolve()))}</code></td></tr>"
        for r in runs) + "</table>")
    out.append(f"<h2>Results</h2><p>Δ: the difference from {e(runs[0].label)} (relative in parentheses).</p>")
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>" + body + "</table>")
    if figure and Path(figure).exists():
        data = base64.b64encode(Path(figure).read_bytes()).decode()
        out.append(f"<figure><img alt='main curves' src='data:image/png;base64,{data}'></figure>")
    out.append("<h2>Spec differences</h2>")
    for a, b, diff in diffs:
        if not diff:
            out.append(f"<p>{e(a)} and {e(b)}: the same spec.</p>")
            continue
        lines = []
        for line in diff.splitlines():
            cls = "add" if line.startswith("+") else "del" if line.startswith("-") else ""
            lines.append(f"<span class='{cls}'>{e(line)}</span>" if cls else e(line))
        out.append(f"<p>{e(a)} → {e(b)}:</p><pre>" + "\n".join(lines) + "</pre>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left;font-size:14px}pre{background:#f5f5f5;padding:1em;overflow:auto}"
             ".add{color:#11622a}.del{color:#a21010}.warn{color:#8a4b00}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>probekit compare</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def _write_csv(path: str, header: list[str], rows: list[list[str]]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def curves(runs: list[RunResults]) -> list[tuple[str, list[str]]]:
    """The runs' main curves: (metric, points) for each metric whose values are keyed by the
    model's layers (`accuracy.block.3`) or by numbers (`mse.128`), with at least two points that
    every run has; in natural order, at most four."""
    layers = next((r.layers for r in runs if r.layers), [])
    found: list[tuple[str, list[str]]] = []
    common = set.intersection(*(set(k for k, v in r.values.items() if _number(v) is not None) for r in runs))
    groups: dict[str, list[str]] = {}
    for key in common:
        for name in layers:  # a layer name may hold dots: try each known one as the key's tail
            if key.endswith("." + name):
                groups.setdefault(key[: -len(name) - 1], []).append(name)
                break
        else:
            head, _, tail = key.rpartition(".")
            if head and _is_float(tail):
                groups.setdefault(head, []).append(tail)
    for metric in natural_sorted(groups, layers):
        points = groups[metric]
        numeric = all(_is_float(p) and p not in layers for p in points)
        points = sorted(points, key=float) if numeric else natural_sorted(points, layers)
        if len(points) >= 2:
            found.append((metric, points))
    return found[:4]


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _figure(runs: list[RunResults], path: str) -> str | None:
    """Overlay the runs' main curves (see `curves`), one panel per metric, 95 % intervals as
    error bars where the runs have seeds; None when there is no curve."""
    found = curves(runs)
    if not found:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = next((r.layers for r in runs if r.layers), [])
    fig, axes = plt.subplots(1, len(found), figsize=(5.2 * len(found), 3.8), squeeze=False)
    for ax, (metric, points) in zip(axes[0], found):
        numeric = all(_is_float(p) and p not in layers for p in points)
        xs = [float(p) for p in points] if numeric else list(range(len(points)))
        for run in runs:
            values = [run.values[f"{metric}.{p}"] for p in points]
            ys = [_number(v) for v in values]
            errs = [v["ci95"] if _is_interval(v) and v.get("ci95") is not None else 0.0 for v in values]
            ax.errorbar(xs, ys, yerr=errs if any(errs) else None, marker="o", capsize=3, label=run.label)
        if numeric:
            ax.set_xlabel(f"key of {metric}")
        else:
            many = len(points) > 6
            ax.set_xticks(xs, points, rotation=45 if many else 0, ha="right" if many else "center")
            ax.set_xlabel("layer (model order)")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(runs), 2), fontsize=8,
               frameon=False)  # below the panels: never over a curve
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
