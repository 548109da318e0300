"""report.md and a self-contained report.html for a run directory."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probekit._checkpoint import write_json, write_text

if TYPE_CHECKING:
    from probekit._context import RunContext


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


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if _is_interval(value):
        if value["n"] > 1 and value["ci95"] is not None:
            return f"{value['mean']:.6g} ± {value['ci95']:.2g} (n={value['n']})"
        return f"{fmt(value['mean'])} (n={value['n']})"
    return str(value)


def write_reports(run: RunContext, results: dict[str, Any]) -> None:
    """Save the report's content (report.json) and render report.md and report.html."""
    write_json(run.run_dir / "report.json", {
        "name": run.spec.name, "sections": run.report_sections, "timings": run.timings,
        "device": str(run.device), "warnings": list(getattr(run, "warnings", [])),
        "tables": dict(getattr(run, "table_keys", {}))})
    render(run.run_dir)


def render(run_dir: str | Path) -> tuple[Path, Path]:
    """(Re)generate report.md and report.html from a run directory's files."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").exists() else {}
    results = json.loads((run_dir / "metrics.json").read_text())
    spec_text = (run_dir / "spec.yaml").read_text() if (run_dir / "spec.yaml").exists() else ""
    name = meta.get("name", run_dir.name)
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png")) if (run_dir / "figures").exists() else []
    sections: list[tuple[str, str]] = [tuple(s) for s in meta.get("sections", [])]  # type: ignore[misc]
    shown_results = {k: v for k, v in results.items() if k not in ("per_seed", "provenance")}
    flat = flatten(shown_results, intervals=True)

    md = [f"# probekit run: {name}", ""]
    timings = meta.get("timings", {})
    if timings:
        md.append("Timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
                  + f"; device {meta.get('device', '?')}.")
        md.append("")
    warnings = meta.get("warnings", [])
    if warnings:
        md += ["## Warnings", ""] + [f"- **Warning:** {w}" for w in warnings] + [""]
    md += ["## Results", "", "| result | value |", "|---|---|"]
    md += [f"| {k} | {fmt(v)} |" for k, v in flat[:200]]
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
