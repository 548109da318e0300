"""The `probekit` command's entry point, and the check that `import probekit` is probekit-core's.

Two unrelated distributions install an import package named `probekit`: this project's
`probekit-core`, and the PyPI project `probekit` (linear probes on LLM activations). Installed over
ours, or beside it earlier on `sys.path`, the other one is what `import probekit` finds, and
everything built on probekit-core would fail with confusing import errors. This module lives outside
the `probekit` package so that it can look before anything imports it: it reads the `__init__.py`
that `import probekit` would run (without running it) and checks for probekit-core's marker line.

- `probekit` (the console script) is `probekit_core:main`: it checks, then runs `probekit._cli.main`.
  A foreign `probekit` stops it with one message and exit status 1.
- Plugins call `check()` before their first `from probekit import ...`; it raises
  `ForeignProbekitError` (an `ImportError`) with the same message.

This module imports only the standard library, so `probekit --help` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ForeignProbekitError", "check", "main"]

DISTRIBUTION = "probekit-core"
#: The line in probekit-core's `probekit/__init__.py` that identifies it.
MARKER = f'__distribution__ = "{DISTRIBUTION}"'


class ForeignProbekitError(ImportError):
    """`import probekit` would import a package that is not probekit-core's."""


def check() -> None:
    """Raise `ForeignProbekitError` unless the `probekit` package Python imports is probekit-core's.

    Cheap when all is well: one attribute look-up once `probekit` is imported, else one small file read.
    """
    module = sys.modules.get("probekit")
    if module is not None and getattr(module, "__distribution__", None) == DISTRIBUTION:
        return
    origin = _origin(module)
    if origin is not None and _is_ours(origin):
        return
    raise ForeignProbekitError(_message(origin), name="probekit", path=str(origin) if origin else None)


def main(argv: Sequence[str] | None = None) -> int:
    """The `probekit` command: check the environment, then run the CLI (exit 1 on a foreign `probekit`)."""
    try:
        check()
    except ForeignProbekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from probekit._cli import main as cli_main

    return cli_main(argv)


def _origin(module: object | None) -> Path | None:
    """The `__init__.py` of the `probekit` package that is (or would be) imported, without importing it."""
    if module is not None:
        file = getattr(module, "__file__", None)
        return Path(file) if file else None
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec("probekit")
    if spec is None:
        import importlib.util

        spec = importlib.util.find_spec("probekit")
    if spec is None or not spec.origin or spec.origin in ("namespace", "built-in"):
        return None
    return Path(spec.origin)


def _is_ours(origin: Path) -> bool:
    try:
        text = origin.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(line.strip() == MARKER for line in text.splitlines())


def _owner(origin: Path) -> str | None:
    """`name version` of the installed distribution whose files include `origin` (the last one that wrote it)."""
    import base64
    import hashlib
    from importlib import metadata

    try:
        digest = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(origin.read_bytes()).digest()).rstrip(
            b"=").decode()
    except OSError:
        digest = None
    candidates: list[tuple[bool, str]] = []
    for dist in metadata.distributions():
        for f in dist.files or ():
            if f.parts[:1] != ("probekit",) or f.name != origin.name:
                continue
            try:
                same = Path(str(dist.locate_file(f))).resolve() == origin.resolve()
            except OSError:
                same = False
            if same:
                written = f.hash is not None and digest is not None and f"{f.hash.mode}={f.hash.value}" == digest
                candidates.append((written, f"{dist.metadata['Name']} {dist.version}"))
    if not candidates:
        return None
    candidates.sort(key=lambda c: not c[0])  # the one whose recorded hash matches the file first
    return candidates[0][1]


def _message(origin: Path | None) -> str:
    if origin is None:
        return (f"Python finds no 'probekit' package, so {DISTRIBUTION} is not installed correctly in this "
                f"environment ({sys.prefix}). Fix: pip install --force-reinstall {DISTRIBUTION}")
    owner = _owner(origin)
    if owner is None:
        who = f"no installed distribution (a folder on sys.path: {origin.parent.parent})"
        fix = f"take {origin.parent.parent} off PYTHONPATH or sys.path"
    else:
        who = f"the distribution '{owner}'"
        fix = f"pip uninstall probekit, then pip install --force-reinstall {DISTRIBUTION}"
    return (f"the 'probekit' package that Python imports ({origin.parent}) is not {DISTRIBUTION}'s: it belongs to "
            f"{who}. The unrelated PyPI project 'probekit' uses the same import name, so the two cannot share "
            f"an environment. Fix: {fix} (or keep the other project in a virtual environment of its own).")
