"""probekit-mamba: Mamba / Mamba2 adapters, a fast CPU selective scan, the length-generalisation probe.

This module only registers types with import strings, so that `probekit plugins` stays fast:
torch and transformers are imported when a type is used.

Public helpers (imported lazily from `probekit_mamba._backends`, see its docstring):

    build_mamba(config: dict, *, backend="auto", use_conv=True, chunk_size=32, arch=None,
                head=False) -> transformers MambaModel / Mamba2Model (/ ...ForCausalLM)
    set_backend(model, backend, *, use_conv=None, chunk_size=None) -> model
    get_backend(model) -> str | None
    available_backends() -> list[str]

and the scans themselves in `probekit_mamba.scan` (`selective_scan`, `ssd_scan`).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import probekit_core.required  # noqa: F401  (first: stops with a clear message if `probekit` is not ours)
from probekit import hookimpl

__version__ = "0.1.0"  # the one place of the version (pyproject.toml reads it)

_LAZY = {
    "build_mamba": "probekit_mamba._backends",
    "set_backend": "probekit_mamba._backends",
    "get_backend": "probekit_mamba._backends",
    "available_backends": "probekit_mamba._backends",
    "MambaAdapter": "probekit_mamba._adapter",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'probekit_mamba' has no attribute '{name}'")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


@hookimpl
def probekit_register_models(register: Any) -> None:
    register("mamba", "probekit_mamba._adapter:MambaAdapter", options="probekit_mamba.options:MambaOptions",
             description="Hugging Face Mamba / Mamba2 (hub id, local directory or config) with a fast CPU "
                         "scan; layers embed, layer.i, layer.i.ssm_state(s), norm, head.")


@hookimpl
def probekit_register_probes(register: Any) -> None:
    register("length-generalization", "probekit_mamba._lengthgen:LengthGeneralizationProbe",
             options="probekit_mamba._lengthgen_options:LengthGenOptions",
             description="Mamba length generalisation by image reconstruction (study 3)", needs_model=False,
             computes=["mse"], accepts_metrics=[])
