"""report.md and a self-contained report.html for a run directory."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probekit._checkpoint import write_json, write_text

if TYPE_CHECKING:
    from probekit._context import RunContext
    from probekit._runner import Run


def _is_interval(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"mean", "std", "ci95", "n"}


def flatten(results: dict[str, Any], prefix: str = "", *, intervals: bool = False) -> list[tuple[str, Any]]:
    """`(dotted key, value)` of every leaf; with `intervals`, `{mean, std, ci95, n}` dicts are leaves."""
    rows: list[tuple[str, Any]] = []
    for key, value in results.items():
        name = f"{prefix}{key}"
        if intervals and _is_interval(value):
            rows.append((name, value))
        elif isinstance(value, dict):
            rows += flatten(value, name + ".", intervals=intervals)
        else:
            rows.append((name, value))
    return rows


def rounded(value: float, digits: int = 4) -> str:
    """`value` to `digits` significant digits, without exponent from 1e-4 to 1e6 (float32 noise such
    as 0.8999999761 and a count's spurious precision such as 0.902344 for 231/256 go)."""
    import math

    if not math.isfinite(value) or value == 0:
        return str(value) if not math.isfinite(value) else "0"
    magnitude = math.floor(math.log10(abs(value)))
    if not -4 <= magnitude < 6:
        return f"{value:.{digits}g}"
    text = f"{value:.{max(digits - 1 - magnitude, 0)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _is_noise(value: float, error: float) -> bool:
    """Whether `error` is only floating-point noise on `value` (seeds that agree exactly sum to a
    spread such as 3.4e-16)."""
    return error <= 1e-9 * abs(value)


def _at_precision_of(value: float, error: float) -> str:
    """`value` rounded to the decimal place of `error`'s second significant digit (at most 6
    significant digits)."""
    import math

    if not math.isfinite(value) or not math.isfinite(error) or error <= 0:
        return rounded(value)
    decimals = 1 - math.floor(math.log10(error))
    if value != 0:
        magnitude = math.floor(math.log10(abs(value)))
        decimals = min(decimals, 5 - magnitude)
        if not -4 <= magnitude < 6:  # as `rounded`: an exponent outside 1e-4 to 1e6
            return f"{value:.{max(magnitude + decimals, 0)}e}"
    return f"{value:.{decimals}f}" if decimals > 0 else f"{round(value, decimals):.0f}"


def fmt(value: Any) -> str:
    """A number as a report shows it: meaningful digits only (see `rounded`); an interval
    `{mean, std, ci95, n}` as `mean ± ci95 (n=...)` with the mean to the interval's precision."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return rounded(value)
    if _is_interval(value):
        mean, ci = value["mean"], value["ci95"]
        if mean is None:
            return f"– (n={value['n']})"
        if value["n"] > 1 and ci is not None:
            if _is_noise(mean, ci):
                return f"{rounded(mean)} ± 0 (n={value['n']})"
            return f"{_at_precision_of(mean, ci)} ± {rounded(ci, 2)} (n={value['n']})"
        return f"{fmt(mean)} (n={value['n']})"
    return str(value)


def sort_key(key: str, layers: Sequence[str] = ()) -> tuple[Any, ...]:
    """A key for sorting dotted result names naturally: a layer name (which may hold dots, such as
    `block.2`) by the model's layer order, other parts with their numbers as numbers
    (`accuracy.2` before `accuracy.11`)."""
    order = {name: i for i, name in enumerate(layers)}
    parts = key.split(".")
    out: list[tuple[Any, ...]] = []
    i = 0
    while i < len(parts):
        for j in range(len(parts), i, -1):  # the longest layer name starting here
            if ".".join(parts[i:j]) in order:
                out.append((0, order[".".join(parts[i:j])]))
                i = j
                break
        else:
            chunks = re.split(r"(\d+)", parts[i])
            out.append((1, tuple((0, int(c), "") if c.isdigit() else (1, 0, c) for c in chunks if c)))
            i += 1
    return tuple(out)


def natural_sorted(keys: Iterable[str], layers: Sequence[str] = ()) -> list[str]:
    """`keys` in natural order (see `sort_key`)."""
    return sorted(keys, key=lambda k: sort_key(k, layers))


def summary_line(results: dict[str, Any], *, limit: int = 300, layers: Sequence[str] = (),
                 more: str = "") -> str:
    """The numbers of `results` (with `seeds:`, their intervals over the seeds; not each seed's) as
    one line of `key=value` entries in natural order, at most
    `limit` characters: entries that do not fit are dropped whole and counted ("and 12 more").
    `more` says where the rest is (e.g. the report's path)."""
    flat = dict(flatten({k: v for k, v in results.items() if k not in ("per_seed", "provenance", "seeds")},
                        intervals=True))
    entries = [f"{k}={fmt(flat[k])}" for k in natural_sorted(flat, layers)
               if (isinstance(flat[k], (int, float)) and not isinstance(flat[k], bool)) or _is_interval(flat[k])]
    shown: list[str] = []
    for i, entry in enumerate(entries):
        rest = len(entries) - i - 1
        tail = f", and {rest} more{more}" if rest else ""
        if len(", ".join([*shown, entry])) + len(tail) > limit:
            break
        shown.append(entry)
    left = len(entries) - len(shown)
    return ", ".join(shown) + (f", and {left} more{more}" if left and shown else
                               f"{left} numbers{more}" if left else "")


def write_reports(run: Run, results: dict[str, Any]) -> None:
    """Save the report's content (report.json) and render report.md and report.html."""
    write_json(run.run_dir / "report.json", {
        "name": run.spec.name, "sections": run.report_sections, "timings": run.timings,
        "device": str(run.device), "warnings": list(getattr(run, "warnings", [])),
        "tables": dict(getattr(run, "table_keys", {})), "layers": layer_order(run)})
    render(run.run_dir)


def layer_order(run: RunContext) -> list[str]:
    """The run model's layer names in the model's order, each followed by its friendly alias; for a
    run with `seeds:` (no model of its own), the first seed run's."""
    model = getattr(run, "model", None)
    if model is None:
        for meta in sorted(Path(run.run_dir).glob("seeds/*/report.json")):
            try:
                return list(json.loads(meta.read_text()).get("layers") or [])
            except (OSError, ValueError):
                continue
        return []
    names: list[str] = []
    try:
        for layer in model.layers():
            names.append(layer.name)
            alias = getattr(layer, "meta", {}).get("alias")
            if alias:
                names.append(alias)
    except Exception:  # an adapter that cannot list its layers now: natural order only
        return []
    return names


def render(run_dir: str | Path) -> tuple[Path, Path]:
    """(Re)generate report.md and report.html from a run directory's files."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").exists() else {}
    results = json.loads((run_dir / "metrics.json").read_text())
    spec_text = (run_dir / "spec.yaml").read_text() if (run_dir / "spec.yaml").exists() else ""
    name = meta.get("name", run_dir.name)
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png")) if (run_dir / "figures").exists() else []
    sections: list[tuple[str, str]] = [(str(title), str(text)) for title, text in meta.get("sections", [])]
    shown_results = {k: v for k, v in results.items() if k not in ("per_seed", "provenance")}
    layers = meta.get("layers") or []
    flat = sorted(flatten(shown_results, intervals=True), key=lambda kv: sort_key(kv[0], layers))
    # a probe that wrote its own sections shows its numbers there, curated: no second, raw table
    curated = [s for s in sections if s[0] != "Model training"]

    md = [f"# probekit run: {name}", ""]
    timings = meta.get("timings", {})
    if timings:
        md.append("Timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
                  + f"; device {meta.get('device', '?')}.")
        md.append("")
    warnings = meta.get("warnings", [])
    if warnings:
        md += ["## Warnings", ""] + [f"- **Warning:** {w}" for w in warnings] + [""]
    if not curated:
        md += ["## Results", "", "| result | value |", "|---|---|"]
        md += [f"| {k} | {fmt(v)} |" for k, v in flat[:200]]
        if len(flat) > 200:
            md.append(f"\n{len(flat) - 200} more numbers in metrics.json.")
        md.append("")
    shown = set()
    for title, body in sections:
        md += [f"## {title}", "", body, ""]
        shown.update(re.findall(r"figures/([\w.-]+\.png)", body))
    rest = [f for f in figures if f not in shown]
    if rest:
        md += ["## Figures", ""] + [f"![{f}](figures/{f})\n" for f in rest]
    prov = results.get("provenance")
    if isinstance(prov, dict):
        git = prov.get("git") or {}
        commit = (f"`{git['commit'][:12]}`" + (" (with uncommitted changes)" if git.get("dirty") else "")
                  + f" of {git.get('folder')}") if git else "none (not run inside a git work tree)"
        md += ["## Provenance", "", "| | |", "|---|---|",
               f"| date (UTC) | {prov.get('date')} |", f"| host | {prov.get('host')} |",
               f"| device | {prov.get('device')} |", f"| seeds | {prov.get('seeds')} |",
               f"| git commit | {commit} |"]
        md += [f"| {name} version | {v} |" for name, v in (prov.get("versions") or {}).items()]
        md.append("")
    if curated:
        md += [f"Every number of this run ({len(flat)}) is in `metrics.json`; `probekit compare` puts runs "
               f"side by side.", ""]
    md += ["## Spec", "", "```yaml", spec_text.rstrip(), "```", ""]
    md_path = run_dir / "report.md"
    write_text(md_path, "\n".join(md))

    html_path = run_dir / "report.html"
    write_text(html_path, _html(run_dir, "\n".join(md), name))
    return md_path, html_path


def _inline_image(run_dir: Path, rel: str) -> str:
    path = run_dir / rel
    if not path.exists():
        return ""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html(run_dir: Path, markdown: str, title: str) -> str:
    """A small Markdown subset to HTML (headings, tables, images, code, paragraphs), no external resources."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)

    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1:j])) + "</pre>")
            i = j + 1
            continue
        m = re.match(r"^(#{1,4}) (.*)", line)
        if m:
            n = len(m.group(1))
            out.append(f"<h{n}>{inline(m.group(2))}</h{n}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            table = ["<table>"]
            for k, cells in enumerate(rows):
                tag = "th" if k == 0 else "td"
                table.append("<tr>" + "".join(f"<{tag}>{inline(c)}</{tag}>" for c in cells) + "</tr>")
            out.append("\n".join(table + ["</table>"]))
            continue
        else:
            img = re.match(r"^!\[([^\]]*)\]\(([^)]+)\)", line.strip())
            if img:
                src = _inline_image(run_dir, img.group(2))
                out.append(f'<figure><img alt="{html.escape(img.group(1))}" src="{src}">'
                           f"<figcaption>{html.escape(img.group(2))}</figcaption></figure>")
            elif line.strip():
                out.append(f"<p>{inline(line)}</p>")
        i += 1
    style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left;font-size:14px}img{max-width:100%}pre{background:#f5f5f5;padding:1em;"
             "overflow:auto}figure{margin:1em 0}figcaption{color:#666;font-size:12px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
