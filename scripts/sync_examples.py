"""Check (and repair) the examples that the packages ship: each is a link to the repository's examples/.

Each package ships its examples as package data in `<import package>/examples/`; examples/ is the
source. In the repository the shipped entries are relative symbolic links into examples/, so they
cannot drift; building a wheel or an sdist copies the linked file's content (setuptools follows the
links). Which package ships an example is said by where its link lives. To ship a new example:

    ln -s ../../../../../examples/NEW.yaml plugins/probekit-X/src/probekit_X/examples/NEW.yaml

`--check` changes nothing and exits 1 when an entry is neither a link to nor a copy of its example,
has no source, or an example of examples/ is shipped by no package or by more than one. Without it,
entries that are plain copies are turned back into links first (a checkout without symlink support
makes copies).

Usage: python scripts/sync_examples.py [--check]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "examples"


def packaged_copies() -> list[Path]:
    """Every shipped entry: src/probekit/examples/*.yaml and plugins/probekit-*/src/*/examples/*.yaml."""
    folders = [ROOT / "src" / "probekit" / "examples", *sorted((ROOT / "plugins").glob("probekit-*/src/*/examples"))]
    return [p for folder in folders for p in sorted(folder.glob("*.yaml"))]


def _show(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def problems() -> list[str]:
    """What --check reports; empty when every entry links to (or equals) its source and each example ships once."""
    out = []
    shipped: dict[str, list[Path]] = {}
    for entry in packaged_copies():
        shipped.setdefault(entry.name, []).append(entry)
        source = SOURCE / entry.name
        if not source.exists():
            out.append(f"{_show(entry)}: no examples/{entry.name} (remove it, or restore the source)")
        elif entry.is_symlink() and entry.resolve() != source.resolve():
            out.append(f"{_show(entry)} links to {os.readlink(entry)}, not to examples/{entry.name}")
        elif source.read_bytes() != entry.read_bytes():
            out.append(f"{_show(entry)} differs from examples/{entry.name}: run scripts/sync_examples.py")
    for source in sorted(SOURCE.glob("*.yaml")):
        entries = shipped.get(source.name, [])
        if not entries:
            out.append(f"examples/{source.name} is shipped by no package: link it from one package's examples/")
        elif len(entries) > 1:
            out.append(f"examples/{source.name} is shipped by {len(entries)} packages: keep one")
    return out


def main(argv: list[str]) -> int:
    if "--check" not in argv:
        for entry in packaged_copies():
            source = SOURCE / entry.name
            if source.exists() and not entry.is_symlink():
                entry.unlink()
                entry.symlink_to(os.path.relpath(source, entry.parent))
                print(f"linked {_show(entry)} -> {os.readlink(entry)}")
    found = problems()
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
