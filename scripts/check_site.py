"""Check a built mkdocs site: internal links and anchors resolve, no helper scripts were copied in.

Usage: .venv/bin/python scripts/check_site.py [SITE_DIR]   (default: site)

Reads every HTML page under SITE_DIR with html.parser (no network). A link is internal when it has
no scheme and no host; it must name a file of the site (a folder means its index.html), and its
#fragment, if any, an id (or <a name>) on the target page. Prints one line a problem and exits 1 if
there are any.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

# attributes that hold a URL, by tag
_URL_ATTRS = {"a": "href", "link": "href", "img": "src", "script": "src", "source": "src", "iframe": "src"}
# files that must not be published: the docs' helper scripts
HELPER_SUFFIXES = (".py",)


class _Page(HTMLParser):
    """Collects a page's ids and the URLs it links to."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []  # (tag, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "a" and values.get("name"):
            self.ids.add(values["name"])
        attr = _URL_ATTRS.get(tag)
        if attr and values.get(attr) is not None:
            self.links.append((tag, values[attr]))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _target(site: Path, page: Path, path: str) -> Path | None:
    """The file a site-relative or page-relative path points at, or None when it leaves the site."""
    base = site if path.startswith("/") else page.parent
    target = (base / unquote(path.lstrip("/"))).resolve()
    if site.resolve() not in (target, *target.parents):
        return None
    return target / "index.html" if target.is_dir() else target


def check_links(site: Path) -> list[str]:
    """Every broken internal link or anchor of the site, as 'page: problem' lines."""
    site = Path(site)
    pages = {p.resolve(): _parse(p) for p in sorted(site.rglob("*.html"))}
    problems: list[str] = []
    for path, page in pages.items():
        name = path.relative_to(site.resolve()).as_posix()
        for tag, url in page.links:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith(("mailto:", "javascript:")):
                continue
            if not parts.path:  # "#anchor" on this page
                target, ids = path, page.ids
            else:
                target = _target(site, path, parts.path)
                if target is None:
                    problems.append(f"{name}: <{tag}> {url}: points outside the site")
                    continue
                if not target.is_file():
                    problems.append(f"{name}: <{tag}> {url}: no such file")
                    continue
                ids = pages[target].ids if target in pages else None
            fragment = unquote(parts.fragment)
            if fragment and ids is not None and fragment not in ids:
                problems.append(f"{name}: <{tag}> {url}: no anchor '#{fragment}' on "
                                f"{target.relative_to(site.resolve()).as_posix()}")
    return problems


def helper_files(site: Path) -> list[str]:
    """Files of the site that are helper scripts (they belong beside the docs, not in them)."""
    return sorted(p.relative_to(site).as_posix() for p in Path(site).rglob("*")
                  if p.is_file() and p.suffix in HELPER_SUFFIXES)


def main(argv: list[str]) -> int:
    site = Path(argv[0] if argv else "site")
    if not (site / "index.html").is_file():
        print(f"error: {site} is not a built site (no index.html); run mkdocs build first", file=sys.stderr)
        return 2
    problems = check_links(site) + [f"{f}: helper script copied into the site" for f in helper_files(site)]
    for line in problems:
        print(line)
    pages = sum(1 for _ in site.rglob("*.html"))
    print(f"check_site: {pages} pages, {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
