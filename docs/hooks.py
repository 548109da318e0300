"""mkdocs hook: generated parts of pages, so that they cannot drift from the code.

`<!-- probekit:spec-reference -->` becomes the reference of every spec key, built from
`probekit._spec.json_schema()` (the same schema `probekit schema` prints), and
`<!-- probekit:types -->` the table of every installed type.
"""

from __future__ import annotations

import json
from typing import Any


def _type_of(prop: dict[str, Any]) -> str:
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type_of(p) for p in prop["anyOf"])
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    t = prop.get("type", "any")
    if t == "array" and "items" in prop:
        return f"list of {_type_of(prop['items'])}"
    return str(t)


def _table(props: dict[str, Any], required: list[str]) -> list[str]:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, prop in props.items():
        default = "required" if key in required else (
            f"`{json.dumps(prop['default'])}`" if "default" in prop else "")
        desc = (prop.get("description") or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | {_type_of(prop).replace('|', chr(92) + '|')} | {default} | {desc} |")
    return rows


def spec_reference() -> str:
    from probekit import json_schema

    schema = json_schema()
    defs = schema["$defs"]
    out = ["### Top level", ""] + _table(schema["properties"], schema.get("required", [])) + [""]
    out += ["### `model.train`", ""] + _table(defs["TrainSpec"]["properties"], []) + [""]
    for section, title in (("ModelSpec", "model"), ("DataSpec", "data"), ("ProbeSpec", "probe"),
                           ("MetricSpec", "metrics")):
        out += [f"### `{title}` types", ""]
        for variant in defs[section].get("oneOf", []):
            name = variant["properties"]["type"]["const"]
            out += [f"#### {title}: `{name}`", "", variant.get("description", ""), ""]
            props = {k: v for k, v in variant["properties"].items() if k != "type"}
            if props:
                out += _table(props, variant.get("required", [])) + [""]
            else:
                out += ["No options.", ""]
    return "\n".join(out)


def types_table() -> str:
    from probekit import KINDS, get_plugin_manager

    pm = get_plugin_manager()
    rows = ["| kind | name | provided by | description |", "|---|---|---|---|"]
    for kind in KINDS:
        for name in pm.names(kind):
            e = pm.get(kind, name)
            rows.append(f"| {kind[:-1]} | `{name}` | `{e.provider}` | {e.description} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if "<!-- probekit:spec-reference -->" in markdown:
        markdown = markdown.replace("<!-- probekit:spec-reference -->", spec_reference())
    if "<!-- probekit:types -->" in markdown:
        markdown = markdown.replace("<!-- probekit:types -->", types_table())
    return markdown
