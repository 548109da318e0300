"""probekit: probe what a neural network represents, layer by layer.

The public API is flat and imported lazily, so that ``import probekit`` (and the
CLI's ``--help``) stays fast and does not import torch::

    import probekit
    adapter = probekit.create_model("module", factory="probekit.testing:small_cnn", input_shape=(1, 8, 8))
    output, states = adapter.capture(adapter.example_inputs(), layers=["3", "11"])
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from probekit._version import __version__
from probekit.hookspecs import hookimpl

if TYPE_CHECKING:
    from probekit.adapter import Layer, ModelAdapter
    from probekit.allocator import tune_allocator
    from probekit.cache import FeatureCache, FeatureSet
    from probekit.capture import CapturePoint, capture
    from probekit.data import DataBundle, DataInfo
    from probekit.errors import ProbekitError, SpecError
    from probekit.metric import Metric
    from probekit.plugins import get_plugin_manager
    from probekit.probe import Probe
    from probekit.registry import (
        create_dataset,
        create_metric,
        create_model,
        create_perturbation,
        create_probe,
    )
    from probekit.runner import Run, run
    from probekit.spec import Options, load_spec
    from probekit.training import Trainer

_LAZY = {
    "ModelAdapter": "probekit.adapter", "Layer": "probekit.adapter",
    "capture": "probekit.capture", "CapturePoint": "probekit.capture",
    "FeatureCache": "probekit.cache", "FeatureSet": "probekit.cache",
    "DataBundle": "probekit.data", "DataInfo": "probekit.data",
    "ProbekitError": "probekit.errors", "SpecError": "probekit.errors",
    "Metric": "probekit.metric", "Probe": "probekit.probe",
    "get_plugin_manager": "probekit.plugins",
    "create_model": "probekit.registry", "create_probe": "probekit.registry",
    "create_metric": "probekit.registry", "create_dataset": "probekit.registry",
    "create_perturbation": "probekit.registry",
    "run": "probekit.runner", "Run": "probekit.runner",
    "load_spec": "probekit.spec", "Options": "probekit.spec",
    "Trainer": "probekit.training",
    "tune_allocator": "probekit.allocator",
}

__all__ = [
    "CapturePoint", "DataBundle", "DataInfo", "FeatureCache", "FeatureSet", "Layer", "Metric", "ModelAdapter",
    "Options", "Probe", "ProbekitError", "Run", "SpecError", "Trainer", "__version__", "capture", "create_dataset",
    "create_metric", "create_model", "create_perturbation", "create_probe", "get_plugin_manager", "hookimpl",
    "load_spec", "run", "tune_allocator",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'probekit' has no attribute '{name}'")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
