"""probekit: probe what a neural network represents, layer by layer.

The package root is the public API: every name a plugin, a benchmark or a user's
script may use is listed in `__all__` and documented on the API page.
`probekit.hookspecs` and `probekit.testing` are public too; every `_`-prefixed
module is implementation and may change without notice.

Names are imported lazily, so that `import probekit` (and the CLI's `--help`)
stays fast and does not import torch:

    import probekit
    adapter = probekit.create_model("module", factory="probekit.testing:small_cnn", input_shape=(1, 8, 8))
    output, states = adapter.capture(adapter.example_inputs(), layers=["3", "11"])
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from probekit._version import __version__
from probekit.hookspecs import hookimpl

#: The distribution this package belongs to; `probekit_core.check()` reads this line to tell it from the
#: unrelated PyPI project that also installs a package named `probekit`.
__distribution__ = "probekit-core"

if TYPE_CHECKING:
    from probekit._adapter import PIL_INTERPOLATION, Layer, ModelAdapter
    from probekit._allocator import tune_allocator
    from probekit._batchsize import BatchSizeOption, resolve_batch_size
    from probekit._cache import FeatureCache, FeatureSet, cache_key
    from probekit._capture import CapturePoint, capture
    from probekit._checkpoint import (
        CorruptCheckpointError,
        atomic_open,
        load_safetensors,
        load_state_dict,
        read_checked_json,
        save_safetensors,
        write_checked_json,
        write_json,
    )
    from probekit._checkpoint import load as load_checkpoint
    from probekit._checkpoint import save as save_checkpoint
    from probekit._color import hsv_to_rgb, rgb_to_hsv
    from probekit._context import RunContext
    from probekit._data import DataBundle, DataInfo, TensorImageDataset, luminance, num_examples
    from probekit._distributed import all_gather, alone, batches_of, group_size, rank_batches, spread
    from probekit._errors import ProbekitError, RunError, SpecError, did_you_mean
    from probekit._hf import load_config as load_hf_config
    from probekit._metric import Metric
    from probekit._plugins import KINDS, PluginManager, get_plugin_manager
    from probekit._probe import Probe
    from probekit._registry import (
        create_dataset,
        create_metric,
        create_model,
        create_perturbation,
        create_probe,
    )
    from probekit._runner import run
    from probekit._section import Section
    from probekit._seeds import SeedResults
    from probekit._seeds import Table as SeedTable
    from probekit._seeds import aggregate as aggregate_seeds
    from probekit._spec import (
        BATCH_SIZE_HELP,
        BatchSize,
        ExistingPath,
        LoadedSpec,
        Options,
        SpecPath,
        json_schema,
        load_spec,
        spec_error_from_validation,
    )
    from probekit._stats import Finding, Interval, baseline_warning, compare
    from probekit._training import Trainer, epoch_seed
    from probekit.builtin._datasets import FolderDataset

# public name -> (private module, name there)
_LAZY: dict[str, tuple[str, str]] = {
    # building blocks
    "create_model": ("_registry", "create_model"), "create_probe": ("_registry", "create_probe"),
    "create_metric": ("_registry", "create_metric"), "create_dataset": ("_registry", "create_dataset"),
    "create_perturbation": ("_registry", "create_perturbation"),
    "get_plugin_manager": ("_plugins", "get_plugin_manager"), "PluginManager": ("_plugins", "PluginManager"),
    "KINDS": ("_plugins", "KINDS"),
    # specs and runs
    "load_spec": ("_spec", "load_spec"), "LoadedSpec": ("_spec", "LoadedSpec"),
    "json_schema": ("_spec", "json_schema"), "Options": ("_spec", "Options"), "BatchSize": ("_spec", "BatchSize"),
    "BATCH_SIZE_HELP": ("_spec", "BATCH_SIZE_HELP"),
    "ExistingPath": ("_spec", "ExistingPath"), "SpecPath": ("_spec", "SpecPath"),
    "spec_error_from_validation": ("_spec", "spec_error_from_validation"),
    "run": ("_runner", "run"), "RunContext": ("_context", "RunContext"), "Section": ("_section", "Section"),
    # numbers over seeds
    "Interval": ("_stats", "Interval"), "Finding": ("_stats", "Finding"), "compare": ("_stats", "compare"),
    "baseline_warning": ("_stats", "baseline_warning"), "SeedResults": ("_seeds", "SeedResults"),
    "SeedTable": ("_seeds", "Table"), "aggregate_seeds": ("_seeds", "aggregate"),
    # errors
    "ProbekitError": ("_errors", "ProbekitError"), "SpecError": ("_errors", "SpecError"),
    "RunError": ("_errors", "RunError"), "did_you_mean": ("_errors", "did_you_mean"),
    # protocols a plugin implements
    "ModelAdapter": ("_adapter", "ModelAdapter"), "Layer": ("_adapter", "Layer"),
    "PIL_INTERPOLATION": ("_adapter", "PIL_INTERPOLATION"),
    "Probe": ("_probe", "Probe"), "Metric": ("_metric", "Metric"),
    "DataBundle": ("_data", "DataBundle"), "DataInfo": ("_data", "DataInfo"),
    "TensorImageDataset": ("_data", "TensorImageDataset"), "luminance": ("_data", "luminance"),
    "num_examples": ("_data", "num_examples"),
    "rgb_to_hsv": ("_color", "rgb_to_hsv"), "hsv_to_rgb": ("_color", "hsv_to_rgb"),
    "FolderDataset": ("builtin._datasets", "FolderDataset"),
    # activations and features
    "capture": ("_capture", "capture"), "CapturePoint": ("_capture", "CapturePoint"),
    "FeatureCache": ("_cache", "FeatureCache"), "FeatureSet": ("_cache", "FeatureSet"),
    "cache_key": ("_cache", "cache_key"),
    # training
    "Trainer": ("_training", "Trainer"), "epoch_seed": ("_training", "epoch_seed"),
    "batches_of": ("_distributed", "batches_of"), "rank_batches": ("_distributed", "rank_batches"),
    "resolve_batch_size": ("_batchsize", "resolve_batch_size"), "BatchSizeOption": ("_batchsize", "BatchSizeOption"),
    "tune_allocator": ("_allocator", "tune_allocator"),
    # files
    "atomic_open": ("_checkpoint", "atomic_open"), "write_json": ("_checkpoint", "write_json"),
    "save_checkpoint": ("_checkpoint", "save"), "load_checkpoint": ("_checkpoint", "load"),
    "load_state_dict": ("_checkpoint", "load_state_dict"),
    "write_checked_json": ("_checkpoint", "write_checked_json"),
    "read_checked_json": ("_checkpoint", "read_checked_json"),
    "save_safetensors": ("_checkpoint", "save_safetensors"), "load_safetensors": ("_checkpoint", "load_safetensors"),
    "CorruptCheckpointError": ("_checkpoint", "CorruptCheckpointError"),
    "load_hf_config": ("_hf", "load_config"),
    # several processes
    "group_size": ("_distributed", "group_size"), "spread": ("_distributed", "spread"),
    "all_gather": ("_distributed", "all_gather"), "alone": ("_distributed", "alone"),
}

__all__ = [
    "BATCH_SIZE_HELP", "BatchSize", "BatchSizeOption", "CapturePoint", "CorruptCheckpointError", "DataBundle",
    "DataInfo", "ExistingPath", "FeatureCache", "FeatureSet", "Finding", "FolderDataset", "Interval", "KINDS",
    "Layer", "LoadedSpec", "Metric", "ModelAdapter", "Options", "PIL_INTERPOLATION", "PluginManager", "Probe",
    "ProbekitError", "RunContext", "RunError", "Section", "SeedResults", "SeedTable", "SpecError", "SpecPath",
    "TensorImageDataset", "Trainer", "__version__", "aggregate_seeds", "all_gather", "alone", "atomic_open",
    "baseline_warning", "batches_of", "cache_key", "capture", "compare", "create_dataset", "create_metric",
    "create_model", "create_perturbation", "create_probe", "did_you_mean", "epoch_seed", "get_plugin_manager",
    "group_size", "hookimpl", "hsv_to_rgb", "json_schema", "load_checkpoint", "load_hf_config", "load_safetensors",
    "load_spec", "load_state_dict", "luminance", "num_examples", "rank_batches", "read_checked_json",
    "resolve_batch_size", "rgb_to_hsv", "run", "save_checkpoint", "save_safetensors", "spec_error_from_validation",
    "spread", "tune_allocator", "write_checked_json", "write_json",
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'probekit' has no attribute '{name}'")
    value = getattr(import_module(f"probekit.{target[0]}"), target[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
