"""The hook specifications every probekit plugin implements some of.

A plugin is a Python module (or object) with functions decorated by
`probekit.hookimpl` whose names match the specs below. Plugins are found
through the `probekit` entry-point group; see docs/writing-plugins.md.

Registration hooks receive a `register` callable:

    register(name, factory, *, description="", options=None, **meta)

`factory` is a callable or an import string `"package.module:attr"` that is
imported only when the type is used, so that listing plugins stays fast.
`options` is a pydantic model (or import string of one) that validates the
type-specific options of a spec section; it is also used for `probekit schema`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from probekit._context import RunContext

hookspec = pluggy.HookspecMarker("probekit")
"""Marks the hook specifications below."""
hookimpl = pluggy.HookimplMarker("probekit")
"""Marks a plugin's hook implementations: decorate them with `@probekit.hookimpl`."""


class Register(Protocol):
    """The callable passed to every `probekit_register_*` hook."""

    def __call__(self, name: str, factory: Any, *, description: str = "", options: Any = None,
                 **meta: Any) -> None: ...


@hookspec
def probekit_register_models(register: Register) -> None:
    """Register model adapter types (the `model.type` of a spec).

    `factory(**options)` must return a `probekit.ModelAdapter`.
    """


@hookspec
def probekit_register_probes(register: Register) -> None:
    """Register probe types (the `probe.type` of a spec).

    `factory(**options)` must return a `probekit.Probe`. Pass
    `needs_model=False` for probes that build their own models, so that a
    spec without a `model:` section is valid for them.

    Metrics are a contract: pass `computes=[...]`, the names of the numbers the
    probe computes itself (e.g. `["accuracy"]`), and `accepts_metrics=[...]`,
    which entries of the spec's `metrics:` it uses: metric names, or metric kinds
    (`"image"` accepts every metric registered with `kind="image"`); `[]` when it
    uses none. A spec listing a metric the probe does not accept is refused
    (exit 2) with the accepted names. A probe that declares no `accepts_metrics`
    is not checked.
    """


@hookspec
def probekit_register_metrics(register: Register) -> None:
    """Register metric types (entries of a spec's `metrics:` list).

    `factory(**options)` must return a `probekit.Metric`: streaming
    `update(pred, target)`, `compute()` and `reset()`. Pass `kind=` what it
    compares (`"image"`: images in [0, 1]; `"classification"`: logits or labels
    against labels; `"representation"`, `"output"`, `"attribution"`), so that
    probes can accept metrics by kind, and `higher_is_better=`.
    """


@hookspec
def probekit_register_datasets(register: Register) -> None:
    """Register dataset sources (the `data.type` of a spec).

    `factory(*, seed, **options)` must return a `probekit.DataBundle`
    (train and test torch datasets of `(image, label)` pairs, images as float
    tensors in [0, 1], CHW, plus metadata).
    """


@hookspec
def probekit_register_perturbations(register: Register) -> None:
    """Register input perturbations by name.

    `factory(**options)` must return a callable
    `perturb(images, mask=None, generator=None) -> images` acting on a batch of
    images in [0, 1] (NCHW) on any device; `mask` (N1HW, bool or float)
    restricts the change to a region.
    """


@hookspec
def probekit_probe_defaults(probe: str, model: Any) -> dict[str, Any] | None:
    """Suggest default options of probe type `probe` for a model adapter, or `None`.

    For example a ViT plugin may suggest the inverse-module architecture of the
    `inversion` probe for its models. Suggestions from all plugins are merged;
    options given in the spec always win.
    """


@hookspec
def probekit_run_started(run: RunContext) -> None:
    """Called when a run starts, after its run directory and resolved spec exist.

    `run` exposes `run_dir`, `spec`, `device` and `log`. Observers such
    as loggers and trackers implement this hook.
    """


@hookspec
def probekit_run_finished(run: RunContext, results: dict[str, Any]) -> None:
    """Called when a run has written `metrics.json`; `results` is its content."""


@hookspec
def probekit_run_failed(run: RunContext, error: BaseException) -> None:
    """Called when a run stops with an exception (the run directory is kept for `--resume`)."""
