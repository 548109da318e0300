"""The built documentation site: what a reader sees must match the code.

Builds the site once (mkdocs --strict, a few seconds; or reads PROBEKIT_DOCS_SITE, a build made just
before) and reads the built HTML: the spec reference against `probekit schema`, the API page for raw
reST and for every public name, and every page for broken internal links, missing anchors and copied
helper scripts (those tests are skipped without the docs extra); and the docstrings themselves for
reST roles, which the API renderer would show as text.
"""

from __future__ import annotations

import ast
import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site: PROBEKIT_DOCS_SITE when set (a build made just before, as CI does), else a fresh build."""
    for module in ("mkdocs", "mkdocstrings", "material"):  # the docs extra
        pytest.importorskip(module)
    if os.environ.get("PROBEKIT_DOCS_SITE"):
        built = Path(os.environ["PROBEKIT_DOCS_SITE"])
        assert (built / "index.html").is_file(), f"PROBEKIT_DOCS_SITE={built} is not a built site"
        return built
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _first_party() -> str:
    """PROBEKIT_LOAD_PLUGINS for the plugins of this repository (plugins/probekit-*) that are installed."""
    ours = {d.name for d in (REPO / "plugins").glob("probekit-*")}
    return ",".join(sorted(ep.name for ep in entry_points(group="probekit")
                           if ep.dist is not None and ep.dist.name.lower().replace("_", "-") in ours))


@pytest.fixture(scope="session")
def schema() -> dict[str, Any]:
    """`probekit schema` with the first-party plugins loaded (what the reference documents)."""
    out = subprocess.run([sys.executable, "-m", "probekit", "schema"], check=True, capture_output=True, text=True,
                         env={**os.environ, "PROBEKIT_LOAD_PLUGINS": _first_party()}).stdout
    return json.loads(out)


# -- reading built pages --------------------------------------------------------------------------
class _Content(HTMLParser):
    """The article of a Material page: its h2/h3 headings and tables, in order, as text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, Any]] = []  # ("heading", text) or ("table", rows)
        self._depth = 0  # inside <article>
        self._heading: list[str] | None = None
        self._skip = 0  # inside a heading's permalink
        self._rows: list[list[dict[str, Any]]] | None = None
        self._cell: dict[str, Any] | None = None
        self._code: list[str] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "article":
            self._depth += 1
        if not self._depth:
            return
        if tag in ("h2", "h3"):
            self._heading = []
        elif tag == "a" and self._heading is not None and ("class", "headerlink") in attrs:
            self._skip += 1
        elif tag == "table":
            self._rows = []
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = {"text": [], "codes": []}
        elif tag == "code" and self._cell is not None:
            self._code = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "article":
            self._depth -= 1
        if not self._depth:
            return
        if tag in ("h2", "h3") and self._heading is not None:
            self.blocks.append(("heading", " ".join("".join(self._heading).split())))
            self._heading = None
        elif tag == "a" and self._skip:
            self._skip -= 1
        elif tag == "table" and self._rows is not None:
            self.blocks.append(("table", [r for r in self._rows if r]))
            self._rows = None
        elif tag in ("td", "th") and self._cell is not None and self._rows:
            self._cell["text"] = " ".join("".join(self._cell["text"]).split())
            self._rows[-1].append(self._cell)
            self._cell = None
        elif tag == "code" and self._code is not None and self._cell is not None:
            self._cell["codes"].append("".join(self._code))
            self._code = None

    def handle_data(self, data: str) -> None:
        if not self._depth:
            return
        self.text.append(data)
        if self._heading is not None and not self._skip:
            self._heading.append(data)
        if self._cell is not None:
            self._cell["text"].append(data)
        if self._code is not None:
            self._code.append(data)


def _read(path: Path) -> _Content:
    page = _Content()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _tables_by_heading(page: _Content) -> dict[str, list[list[dict[str, Any]]]]:
    tables, heading = {}, None
    for kind, value in page.blocks:
        if kind == "heading":
            heading = value
        elif heading is not None:
            assert heading not in tables, f"two tables under '{heading}'"
            tables[heading] = value
    return tables


# -- what the schema says -------------------------------------------------------------------------
def _expected_objects(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Heading text -> the schema object whose options its table must list."""
    defs = schema["$defs"]
    objects = {"Top level": schema, "model.train": defs["TrainSpec"]}
    sections = {"ModelSpec": "model", "DataSpec": "data", "ProbeSpec": "probe", "MetricSpec": "metrics"}
    for section, title in sections.items():
        for variant in defs.get(section, {}).get("oneOf", []):
            objects[f"{title}: {variant['properties']['type']['const']}"] = variant
    for name, obj in defs.items():
        if name not in sections and name != "TrainSpec" and "properties" in obj:
            objects[name] = obj
    return objects


def _values(prop: dict[str, Any]) -> list[Any]:
    """The enum and const values a property allows, in schema order."""
    found = ([prop["const"]] if "const" in prop else []) + list(prop.get("enum", []))
    items = [prop["items"]] if isinstance(prop.get("items"), dict) else []
    for sub in prop.get("anyOf", []) + prop.get("prefixItems", []) + items:
        found += _values(sub)
    return found


def _default(key: str, prop: dict[str, Any], required: list[str]) -> str:
    if key in required:
        return "required"
    return json.dumps(prop["default"]) if "default" in prop else ""


def _plain(description: str) -> str:
    """A description as the page shows it: code marks gone, whitespace collapsed, nothing else lost."""
    return " ".join(re.sub(r"`+", "", description).split())


# -- tests ----------------------------------------------------------------------------------------
def test_spec_reference_matches_schema(site: Path, schema: dict[str, Any]) -> None:
    page = _read(site / "spec" / "index.html")
    headings = {v for k, v in page.blocks if k == "heading"}
    tables = _tables_by_heading(page)
    expected = _expected_objects(schema)
    assert not set(expected) - headings, "schema objects without a heading in the reference"
    assert not set(tables) - set(expected), "tables in the reference that the schema does not have"
    checked = 0
    for heading, obj in expected.items():
        props = {k: v for k, v in obj["properties"].items() if not (k == "type" and "const" in v)}
        if not props:
            assert heading not in tables, heading
            continue
        header, *rows = tables[heading]
        assert [c["text"] for c in header] == ["key", "type", "default", "description"], heading
        assert [r[0]["text"] for r in rows] == list(props), f"{heading}: keys"
        for row in rows:
            assert len(row) == 4, f"{heading}: row {row[0]['text']} has {len(row)} cells"
            key, typ, default, desc = row
            prop = props[key["text"]]
            where = f"{heading} → {key['text']}"
            assert default["text"] == _default(key["text"], prop, obj.get("required", [])), where
            assert [json.loads(c) for c in typ["codes"]] == _values(prop), where
            assert desc["text"].startswith(_plain(prop.get("description") or "")), where
            checked += 1
    assert checked > 100  # the core and six plugins: a short count means rows went missing


def test_spec_reference_shows_literal_text(site: Path) -> None:
    text = "".join(_read(site / "spec" / "index.html").text)
    for shown in ("runs/<name>", "cuda:<i>", "mps"):
        assert shown in text


def test_spec_reference_documents_first_party_plugins_only(site: Path) -> None:
    headings = {v for k, v in _read(site / "spec" / "index.html").blocks if k == "heading"}
    assert "probe: linear" in headings and "model: vit" in headings
    assert "probe: norms" not in headings and "metrics: mae" not in headings  # the template plugin's


REST_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|obj|data|exc|ref|const|term|doc):`?")


def test_api_page_has_no_rest_roles(site: Path) -> None:
    source = (site / "api" / "index.html").read_text(encoding="utf-8")
    text = html.unescape("".join(_read(site / "api" / "index.html").text))
    found = REST_ROLE.findall(text) + REST_ROLE.findall(source) + re.findall(r"``\w", text)
    assert not found, f"raw reST on the API page: {sorted(set(found))}"


def _docstrings(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            yield node.lineno, node.value.value


def test_docstrings_have_no_rest_roles() -> None:
    roots = [REPO / "src" / "probekit", *sorted((REPO / "plugins").glob("*/src"))]
    found = [f"{path.relative_to(REPO)}:{line}: {m.group(0)}" for root in roots for path in sorted(root.rglob("*.py"))
             for line, doc in _docstrings(path) for m in REST_ROLE.finditer(doc)]
    assert not found, "reST roles in docstrings (write `name` instead):\n" + "\n".join(found)


def test_api_page_documents_public_api(site: Path) -> None:
    import probekit

    source = (site / "api" / "index.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'id="([^"]+)"', source))
    missing = [n for n in probekit.__all__ if n != "__version__" and f"probekit.{n}" not in ids]
    assert not missing, f"public names without an entry on the API page: {missing}"
    for module in ("probekit.hookspecs", "probekit.testing"):
        assert module in ids


def _checker():
    spec = importlib.util.spec_from_file_location("check_site", REPO / "scripts" / "check_site.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_site_links_and_anchors_resolve(site: Path) -> None:
    assert _checker().check_links(site) == []


def test_site_has_no_helper_scripts(site: Path) -> None:
    assert _checker().helper_files(site) == []
    assert (site / "spec" / "index.html").is_file() and not (site / "hooks.py").exists()


def test_link_checker_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "index.html").write_text('<h2 id="x">x</h2><a href="#x">ok</a><a href="#y">no anchor</a>'
                                         '<a href="a/">ok</a><a href="b/">missing</a><a href="a/#z">bad</a>'
                                         '<a href="https://example.org/">external</a>')
    (tmp_path / "a" / "index.html").write_text('<a href="../index.html#x">ok</a><img src="../img.png">')
    (tmp_path / "tool.py").write_text("")
    checker = _checker()
    problems = checker.check_links(tmp_path)
    assert len(problems) == 4, problems
    assert any("#y" in p for p in problems) and any("b/" in p for p in problems)
    assert any("a/#z" in p for p in problems) and any("img.png" in p for p in problems)
    assert checker.helper_files(tmp_path) == ["tool.py"]
