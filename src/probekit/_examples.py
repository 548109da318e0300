"""Example specs shipped inside the installed packages (`probekit examples`, `probekit run NAME`).

The core and each plugin keep their examples as package data, in an `examples/` folder of the import
package (`probekit/examples/quickstart.yaml`, `probekit_mamba/examples/mamba-length.yaml`, ...); the
repository's `examples/` is their source (`scripts/sync_examples.py` copies them, a test checks they
are identical). An example's name is its file name without `.yaml`. Its header comment says what it
shows (its first sentence), how long it takes (a line `# minutes: N (2 CPU cores)`) and how to try it
in seconds (a line `# quick: --set KEY=VALUE ...`: overrides for a smoke run, not for results).

Finding the examples imports no plugin: the folders are located with `importlib.util.find_spec`
from the entry points, so `probekit examples` stays fast.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from probekit._errors import SpecError, did_you_mean

CORE = "probekit-core"
_MINUTES = re.compile(r"^#\s*minutes:\s*([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)
_QUICK = re.compile(r"^#\s*quick:(.*)$", re.IGNORECASE)


@dataclass
class Example:
    """An installed example spec."""

    name: str
    plugin: str  # the distribution that ships it
    path: Path
    shows: str
    minutes: float | None
    quick: list[str] = field(default_factory=list)  # --set overrides of a smoke run
    missing: list[str] = field(default_factory=list)  # what to pip install before it can run

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def example_folders() -> list[tuple[str, Path]]:
    """(distribution, examples folder) of the core and of every installed plugin that ships examples."""
    folders = [(CORE, Path(__file__).parent / "examples")]
    allowed = os.environ.get("PROBEKIT_LOAD_PLUGINS")
    allow = None if allowed is None else {a.strip() for a in allowed.split(",") if a.strip()}
    seen = set()
    for ep in metadata.entry_points(group="probekit"):
        if allow is not None and ep.name not in allow:
            continue
        top = ep.value.partition(":")[0].split(".")[0]
        if top in seen:
            continue
        seen.add(top)
        try:
            spec = importlib.util.find_spec(top)  # locates the package without running it
        except (ImportError, ValueError):
            continue
        owner = getattr(ep, "dist", None)
        dist = owner.name if owner is not None else ep.name
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            folders.append((dist, Path(location) / "examples"))
    return [(dist, folder) for dist, folder in folders if folder.is_dir()]


def read_header(path: Path) -> tuple[str, float | None, list[str]]:
    """(what it shows: the first sentence, minutes, quick overrides) from the comments at the top of an example."""
    prose, minutes, quick = [], None, []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        m, q = _MINUTES.match(line), _QUICK.match(line)
        if m:
            minutes = float(m.group(1))
        elif q:
            words = q.group(1).split()
            quick = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--set"]
        else:
            prose.append(line.lstrip("#").strip())
    text = " ".join(prose)
    sentence = re.match(r"(.+?[.?!])(\s|$)", text)
    return (sentence.group(1) if sentence else text), minutes, quick


def list_examples(*, check: bool = True) -> list[Example]:
    """Every installed example, the core's first, then by plugin and name.

    With `check`, each example's `missing` lists the pip requirements that its types need and this
    environment lacks (a plugin, or a dataset's extra such as `probekit-core[mnist]`).
    """
    examples = []
    for dist, folder in example_folders():
        for path in sorted(folder.glob("*.yaml")):
            shows, minutes, quick = read_header(path)
            examples.append(Example(path.stem, dist, path, shows, minutes, quick))
    examples.sort(key=lambda e: (e.plugin != CORE, e.plugin, e.name))
    if check:
        for example in examples:
            example.missing = missing_for(example.path)
    return examples


def find_example(name: str, *, missing_ok: bool = False) -> Example | None:
    """The installed example called `name`; unknown: None with `missing_ok`, else a `SpecError`."""
    examples = list_examples(check=False)
    for example in examples:
        if example.name == name:
            return example
    if missing_ok:
        return None
    names = [e.name for e in examples]
    raise SpecError(f"no installed example is called '{name}'", path="NAME",
                    fix=f"Installed examples: {', '.join(names) or 'none'}.{did_you_mean(name, names)} "
                        f"`probekit examples` lists them.")


def missing_for(path: Path) -> list[str]:
    """The pip requirements an example needs that are not installed (types from absent plugins, extras)."""
    import yaml

    from probekit._plugins import FIRST_PARTY, get_plugin_manager
    from probekit._preflight import importable

    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return []
    wanted: list[tuple[str, Any]] = []
    model = spec.get("model") or {}
    wanted.append(("models", model.get("type")))
    wanted.append(("datasets", ((model.get("train") or {}).get("data") or {}).get("type")))
    wanted.append(("datasets", (spec.get("data") or {}).get("type")))
    wanted.append(("probes", (spec.get("probe") or {}).get("type")))
    for metric in spec.get("metrics") or []:
        wanted.append(("metrics", metric.get("type") if isinstance(metric, dict) else metric))
    for item in (spec.get("probe") or {}).get("perturbations") or []:
        wanted.append(("perturbations", item.get("type") if isinstance(item, dict) else item))
    for analysis in (spec.get("probe") or {}).get("analyses") or []:
        if analysis in ("colour", "color"):  # the inversion probe's colour analysis perturbs hues
            wanted.append(("perturbations", "hue-set"))
    pm = get_plugin_manager()
    missing: list[str] = []
    for kind, name in wanted:
        if not isinstance(name, str):
            continue
        entry = pm.registries[kind].get(name)
        if entry is None:
            need: str | None = FIRST_PARTY.get(kind, {}).get(name, f"a plugin providing {kind[:-1]} '{name}'")
        else:
            need = next((req for module, req in (entry.meta.get("requires") or {}).items()
                         if not importable(module)), None)
        if need and need not in missing:
            missing.append(need)
    return missing


def copy_example(name: str, directory: Path, *, force: bool = False) -> Path:
    """Write the example `name` into `directory` as `NAME.yaml`; refuses to overwrite without `force`."""
    example = find_example(name)
    assert example is not None
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{example.name}.yaml"
    if target.exists() and not force:
        raise SpecError(f"{target} exists", path="DIR", fix="Choose another folder, or pass --force to overwrite it.")
    target.write_text(example.path.read_text(encoding="utf-8"), encoding="utf-8")
    return target
