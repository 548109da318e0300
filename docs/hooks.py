"""mkdocs hook: generated parts of pages, so that they cannot drift from the code.

`<!-- probekit:spec-reference -->` becomes the reference of every spec key, rendered from the JSON
Schema that `probekit schema` prints, and `<!-- probekit:types -->` the table of every installed type.
Both cover the core and the installed first-party plugins (those under plugins/probekit-*): a plugin
installed beside them, such as plugins/_template, is not part of the reference.
`<!-- probekit:template-reference -->` (on the plugin-writing page) documents the template's types.

Tables are written as HTML, with every text escaped, so that no `|`, `<` or `*` in a description or
a value can change the table's shape.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from markdown.extensions.toc import slugify

REPO = Path(__file__).resolve().parents[1]  # set again from the config's docs_dir in on_config
SECTIONS = (("ModelSpec", "model"), ("DataSpec", "data"), ("ProbeSpec", "probe"), ("MetricSpec", "metrics"))
_LABELS = {"ModelSpec": "model section", "DataSpec": "data section", "ProbeSpec": "probe section",
           "MetricSpec": "metric with options"}
_CODE = re.compile(r"(`+)(.+?)\1")  # a Markdown (or reST ``double``) code span


def first_party_plugins() -> list[str]:
    """Entry-point names of the installed plugins whose distribution is one of plugins/probekit-*."""
    from importlib.metadata import entry_points

    ours = {d.name.lower() for d in (REPO / "plugins").glob("probekit-*") if d.is_dir()}
    names = set()
    for ep in entry_points(group="probekit"):
        dist = getattr(ep, "dist", None)
        if dist is not None and dist.name.lower().replace("_", "-") in ours:
            names.add(ep.name)
    return sorted(names)


def _environ() -> dict[str, str]:
    return {**os.environ, "PROBEKIT_LOAD_PLUGINS": ",".join(first_party_plugins())}


def load_schema(plugins: str | None = None) -> dict[str, Any]:
    """What `probekit schema` prints with the core and the first-party plugins (or `plugins`) loaded."""
    env = _environ() if plugins is None else {**os.environ, "PROBEKIT_LOAD_PLUGINS": plugins}
    out = subprocess.run([sys.executable, "-m", "probekit", "schema"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


# -- text -----------------------------------------------------------------------------------------
def inline(text: str) -> str:
    """Plain text with `code` spans, as HTML: everything escaped, code spans as <code>."""
    parts, end = [], 0
    for m in _CODE.finditer(text):
        parts += [html.escape(text[end:m.start()]), f"<code>{html.escape(m.group(2).strip())}</code>"]
        end = m.end()
    parts.append(html.escape(text[end:]))
    return "".join(parts).replace("\n", " ")


def code(value: Any) -> str:
    """A JSON value as HTML code."""
    return f"<code>{html.escape(json.dumps(value))}</code>"


def anchor(heading: str) -> str:
    """The id the toc extension gives a heading with this text."""
    return slugify(heading, "-")


# -- types ----------------------------------------------------------------------------------------
def _bounds(prop: dict[str, Any]) -> str:
    marks = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
    return ", ".join(f"{sign} {prop[k]}" for k, sign in marks if k in prop)


def _ref_link(ref: str, links: dict[str, tuple[str, str]]) -> str:
    name = ref.rsplit("/", 1)[-1]
    label, target = links.get(name, (name, anchor(name)))
    return f'<a href="#{target}">{html.escape(label)}</a>'


def type_html(prop: dict[str, Any], links: dict[str, tuple[str, str]]) -> str:
    """The type of a schema property as HTML; its allowed values (enum, const) as <code>, nothing else."""
    if "const" in prop:
        return code(prop["const"])
    if "enum" in prop:
        return "one of " + ", ".join(code(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(type_html(p, links) for p in prop["anyOf"])
    if "$ref" in prop:
        return _ref_link(prop["$ref"], links)
    t = prop.get("type", "any")
    if t == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(type_html(p, links) for p in prop["prefixItems"]) + "]"
        text = "list"
        if "minItems" in prop and prop.get("minItems") == prop.get("maxItems"):
            text += f" of {prop['minItems']}"
        if "items" in prop:
            item = type_html(prop["items"], links)
            text += f" of ({item})" if " or " in item or "one of" in item else f" of {item}"
        return text
    if t == "object":
        return "mapping"
    bounds = _bounds(prop)
    return f"{html.escape(str(t))} {html.escape(bounds)}" if bounds else html.escape(str(t))


def allowed_values(prop: dict[str, Any]) -> list[Any]:
    """Every enum and const value a property accepts (through anyOf and list items), in order."""
    values: list[Any] = []
    if "const" in prop:
        values.append(prop["const"])
    values += prop.get("enum", [])
    for sub in prop.get("anyOf", []) + prop.get("prefixItems", []):
        values += allowed_values(sub)
    if isinstance(prop.get("items"), dict):
        values += allowed_values(prop["items"])
    return values


def default_text(key: str, prop: dict[str, Any], required: list[str]) -> str:
    """The default column: 'required', the default as JSON, or empty when there is none."""
    if key in required:
        return "required"
    return json.dumps(prop["default"]) if "default" in prop else ""


def _description(prop: dict[str, Any]) -> str:
    text = inline(prop.get("description") or "")
    if "pattern" in prop:
        text += f" Must match <code>{html.escape(prop['pattern'])}</code>."
    if prop.get("minLength"):
        text += f" At least {prop['minLength']} character(s)."
    return text.strip()


def table(props: dict[str, Any], required: list[str], links: dict[str, tuple[str, str]]) -> str:
    """An HTML table of a schema object's properties: key, type, default, description."""
    rows = ["<table>", "<thead><tr><th>key</th><th>type</th><th>default</th><th>description</th></tr></thead>",
            "<tbody>"]
    for key, prop in props.items():
        default = default_text(key, prop, required)
        cell = default if default in ("required", "") else f"<code>{html.escape(default)}</code>"
        rows.append(f'<tr><td style="white-space: nowrap"><code>{html.escape(key)}</code></td>'
                    f"<td>{type_html(prop, links)}</td>"
                    f"<td>{cell}</td><td>{_description(prop)}</td></tr>")
    rows += ["</tbody>", "</table>"]
    return "\n".join(rows)


# -- the reference --------------------------------------------------------------------------------
def reference_sections(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(heading level, heading text, schema object) of every table of the reference, in page order.

    Heading texts are plain: the page writes them with their names as code.
    """
    defs = schema["$defs"]
    out: list[tuple[str, str, dict[str, Any]]] = [("##", "Top level", schema), ("##", "model.train", defs["TrainSpec"])]
    for section, title in SECTIONS:
        for variant in defs.get(section, {}).get("oneOf", []):
            out.append(("###", f"{title}: {variant['properties']['type']['const']}", variant))
    for name in nested_defs(schema):
        out.append(("###", name, defs[name]))
    return out


def nested_defs(schema: dict[str, Any]) -> list[str]:
    """The $defs that are option groups inside a section (not the sections themselves)."""
    skip = {"TrainSpec", *(s for s, _ in SECTIONS)}
    return sorted(k for k, v in schema["$defs"].items() if k not in skip and "properties" in v)


def _used_by(schema: dict[str, Any], name: str) -> list[str]:
    ref = f"#/$defs/{name}"
    users = []
    for _, heading, obj in reference_sections(schema):
        for key, prop in obj.get("properties", {}).items():
            if ref in json.dumps(prop):
                users.append(f"<code>{html.escape(heading)}</code> → <code>{html.escape(key)}</code>")
    return users


def _heading(level: str, text: str) -> str:
    """'Top level' stays text, 'probe: linear' becomes probe: `linear`, other names are code."""
    if text == "Top level":
        return f"{level} {text}"
    kind, sep, name = text.partition(": ")
    return f"{level} {kind}: `{name}`" if sep else f"{level} `{text}`"


def spec_reference(schema: dict[str, Any] | None = None) -> str:
    schema = load_schema() if schema is None else schema
    links = {"TrainSpec": ("model.train", anchor("model.train"))}
    for section, title in SECTIONS:
        links[section] = (_LABELS[section], anchor(f"{title} types"))
    out: list[str] = []
    current = None
    for level, heading, obj in reference_sections(schema):
        group = heading.split(": ")[0] if level == "###" and ": " in heading else None
        if level == "###" and group and group != current:
            out += [f"## `{group}` types", ""]
            current = group
        elif level == "###" and not group and current != "nested":
            out += ["## Nested options", "", "Option groups used as the value of a key above.", ""]
            current = "nested"
        out += [_heading(level, heading), ""]
        if obj.get("description") and heading != "Top level":
            out += [f"<p>{inline(obj['description'])}</p>", ""]
        if current == "nested":
            out += [f"<p>Used by: {', '.join(_used_by(schema, heading)) or 'none'}.</p>", ""]
        props = {k: v for k, v in obj.get("properties", {}).items()
                 if not (k == "type" and "const" in v)}
        out += [table(props, obj.get("required", []), links) if props else "<p>No options.</p>", ""]
    return "\n".join(out)


def template_reference() -> str:
    """The spec options of the types plugins/_template registers, or how to see them when not installed."""
    from importlib.metadata import entry_points

    if not any(ep.name == "template" for ep in entry_points(group="probekit")):
        return "<p>Install the template (<code>pip install -e plugins/_template</code>) to list its options here.</p>"
    core, template = load_schema(""), load_schema("template")
    links = {"TrainSpec": ("model.train", "spec.md#modeltrain")}
    out: list[str] = []
    for section, title in SECTIONS:
        known = {v["properties"]["type"]["const"] for v in core["$defs"].get(section, {}).get("oneOf", [])}
        for variant in template["$defs"].get(section, {}).get("oneOf", []):
            name = variant["properties"]["type"]["const"]
            if name in known:
                continue
            props = {k: v for k, v in variant["properties"].items() if k != "type"}
            out += [f"### {title}: `{name}`", "", f"<p>{inline(variant.get('description', ''))}</p>", "",
                    table(props, variant.get("required", []), links) if props else "<p>No options.</p>", ""]
    return "\n".join(out)


def _distributions() -> dict[str, str]:
    """Plugin name -> the distribution that provides it (the core's for the built-in plugins)."""
    from importlib.metadata import entry_points

    core = re.search(r'^name = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    names = {ep.name: ep.dist.name for ep in entry_points(group="probekit") if ep.dist is not None}
    return {"": core.group(1) if core else "probekit", **names}


def types_table() -> str:
    import probekit

    os.environ["PROBEKIT_LOAD_PLUGINS"] = _environ()["PROBEKIT_LOAD_PLUGINS"]  # before the manager exists
    pm = probekit.get_plugin_manager()
    dists = _distributions()
    rows = ["<table>", "<thead><tr><th>kind</th><th>name</th><th>provided by</th><th>description</th></tr></thead>",
            "<tbody>"]
    for kind in probekit.KINDS:
        for name in pm.names(kind):
            e = pm.get(kind, name)
            dist = dists[""] if e.provider.startswith("probekit.builtin") else dists.get(e.provider, e.provider)
            rows.append(f"<tr><td>{html.escape(kind[:-1])}</td>"
                        f'<td style="white-space: nowrap"><code>{html.escape(name)}</code></td>'
                        f'<td style="white-space: nowrap">{html.escape(dist)}</td>'
                        f"<td>{inline(e.description)}</td></tr>")
    rows += ["</tbody>", "</table>"]
    return "\n".join(rows)


def on_config(config: Any, **kwargs: Any) -> Any:
    global REPO
    REPO = Path(config["docs_dir"]).resolve().parent
    return config


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if "<!-- probekit:spec-reference -->" in markdown:
        markdown = markdown.replace("<!-- probekit:spec-reference -->", spec_reference())
    if "<!-- probekit:template-reference -->" in markdown:
        markdown = markdown.replace("<!-- probekit:template-reference -->", template_reference())
    if "<!-- probekit:types -->" in markdown:
        markdown = markdown.replace("<!-- probekit:types -->", types_table())
    return markdown
