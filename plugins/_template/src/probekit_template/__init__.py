"""A template probekit plugin: the hook implementations.

Keep this module light: it is imported whenever probekit lists plugins, so the
heavy parts (torch code) live in `_impl` and are named by import strings.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

import probekit_core.required  # noqa: F401  (first: stops with a clear message if `probekit` is not ours)
from probekit import Options, hookimpl

__version__ = "0.1.0"  # the one place of the version (pyproject.toml reads it)


class NormsOptions(Options):
    layers: list[str] = Field(..., description="Layers whose mean state norm is reported.")


class MaeOptions(Options):
    pass


@hookimpl
def probekit_register_probes(register: Any) -> None:
    register("norms", "probekit_template._impl:NormsProbe", options=NormsOptions,
             description="Mean L2 norm of each layer's states on the test set (template plugin).",
             computes=["norm"], accepts_metrics=[])  # the metrics contract: what it computes, which it uses


@hookimpl
def probekit_register_metrics(register: Any) -> None:
    register("mae", "probekit_template._impl:MeanAbsoluteError", options=MaeOptions,
             description="Mean absolute error (template plugin).", higher_is_better=False, kind="image")
