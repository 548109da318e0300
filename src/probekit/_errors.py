"""Exceptions with messages a researcher can act on."""

from __future__ import annotations

import os
from collections.abc import Iterable


class ProbekitError(Exception):
    """Base class of probekit's own errors."""


class SpecError(ProbekitError):
    """A spec is invalid. The CLI prints it without a traceback and exits 2.

    The message names the file, the key path, what is wrong and how to fix it.
    """

    def __init__(self, message: str, *, path: str = "", file: str | None = None, fix: str = ""):
        self.message = message
        self.path = path
        self.file = file
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(p for p in (display_path(self.file) if self.file else None, self.path) if p)
        text = f"{where}: {self.message}" if where else self.message
        if self.fix:
            text += f" {self.fix}" if text.endswith((".", "?", "!")) else f". {self.fix}"
        return text

    def with_file(self, file: str | None) -> SpecError:
        return SpecError(self.message, path=self.path, file=file, fix=self.fix)


class UnknownTypeError(SpecError, KeyError):
    """A model, probe, metric, dataset or perturbation type is not installed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return SpecError.__str__(self)


class PluginError(ProbekitError):
    """A plugin is broken (for example two plugins provide the same name)."""


class RunError(ProbekitError):
    """A run cannot continue (exit status 1); the run directory is kept for `--resume`."""


def display_path(path: str | os.PathLike[str]) -> str:
    """`path` as a message shows it: relative to the current directory when it lies under it (as
    the user probably typed it), else as it is."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    try:
        cwd = os.getcwd()
    except OSError:  # the current directory was deleted
        return text
    if text == cwd:
        return "."
    return os.path.relpath(text, cwd) if text.startswith(cwd.rstrip(os.sep) + os.sep) else text


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A " Did you mean 'x'?" hint for a misspelt `name` among `choices`, or an empty string."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""
