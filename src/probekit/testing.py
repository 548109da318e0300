"""Tiny real models for tests and offline examples (like captum's test models), and test helpers.

The models are ordinary `nn.Module` factories, usable with the `module` adapter:
`model: {type: module, factory: "probekit.testing:small_cnn"}`.

This module is also a pytest plugin (entry point `pytest11: probekit`), so every test session
with probekit installed, a plugin's tests among them, gets without copying: the `slow` marker,
the Agg matplotlib backend, and feature and model caches kept in the session's temporary
directory instead of the user's home (the autouse fixture `probekit_cache`). The module imports
torch only when a model is built and pytest only when pytest loads it, so that the plugin costs
nothing and the models work without pytest installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

try:
    import pytest
except ImportError:  # the models work without pytest
    pytest = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from torch import nn

    from probekit._context import RunContext


def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> nn.Sequential:
    """A 3-conv CNN classifier for small images (8x8 digits to 28x28 MNIST and up).

    Module paths: `0` conv, `1` batch norm, `2` ReLU, `3`-`5` the same again,
    `6` 2x2 max pool, `7` conv, `8` ReLU, `9` global pool, `10` flatten, `11` linear head.
    """
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
    )


def mnist_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16, image_size: int = 28) -> nn.Sequential:
    """The convolutions of `small_cnn` with max pooling, flatten and a linear head: a classifier that
    keeps the digit's layout (the quickstart's model; 0.98 test accuracy on mnist5k after 4 epochs).

    Module paths: `0` conv, `1` batch norm, `2` ReLU, `3`-`5` the same again, `6` 2x2 max pool, `7` conv,
    `8` ReLU, `9` 2x2 max pool, `10` flatten, `11` linear head. `image_size` is the input's side (the
    head's width depends on it).
    """
    from torch import nn

    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * width * side * side, num_classes),
    )


def mlp(in_features: int = 64, hidden: int = 64, num_classes: int = 10, depth: int = 2) -> nn.Sequential:
    """An MLP classifier on flattened images: Flatten, (Linear, ReLU) x depth, Linear."""
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn_section(width: int = 4, in_channels: int = 1, num_classes: int = 10) -> dict[str, Any]:
    """A spec's `model:` section with `small_cnn` (frozen, untrained) for 8x8 digits in tests."""
    return {"type": "module", "factory": "probekit.testing:small_cnn",
            "kwargs": {"in_channels": in_channels, "num_classes": num_classes, "width": width}}


def reset_plugin_manager() -> None:
    """Forget the process's plugin manager, so that the next use loads the plugins anew."""
    from probekit._plugins import reset_plugin_manager as reset

    reset()


def prepare_run(loaded: Any, run_dir: Any, **options: Any) -> Any:
    """Prepare a run without executing it (`probekit.run` does both); returns the `RunContext`."""
    from probekit._runner import prepare

    return prepare(loaded, run_dir, **options)


def execute_run(run: RunContext) -> dict[str, Any]:
    """Execute a run made by `prepare_run`; returns the content of metrics.json."""
    from probekit._runner import execute

    return execute(run)


def read_metrics(run_dir: Any) -> dict[str, Any]:
    """A run directory's metrics.json without its `provenance` (date, host, ...: it differs between runs,
    so compare these to check that two runs gave the same results)."""
    import json
    from pathlib import Path

    results = json.loads((Path(run_dir) / "metrics.json").read_text())
    results.pop("provenance", None)
    return results


def limit_memory(monkeypatch: Any, nbytes: int) -> None:
    """Make `batch_size: auto` on the CPU see only `nbytes` of available memory (a pytest monkeypatch)."""
    monkeypatch.setattr("probekit._batchsize.available_memory", lambda: nbytes)


def isolated_plugins(monkeypatch: Any, plugins: dict[str, Any]) -> Any:
    """Use a plugin manager with only the core's built-ins and `plugins` (name -> module or object)."""
    import probekit._plugins as _plugins

    pm = _plugins.PluginManager(load_entry_points=False)
    for name, plugin in plugins.items():
        pm.register(plugin, name=name)
    monkeypatch.setattr(_plugins, "_manager", pm)
    return pm


def heavy_modules_after_loading_plugins(heavy: Sequence[str] = ("torch", "timm", "transformers")) -> list[str]:
    """Which of `heavy` a fresh interpreter has imported after loading every plugin (should be none).

    `probekit --help`, `plugins` and `list` must stay fast: a plugin imports its libraries only when
    one of its types is used.
    """
    import subprocess
    import sys

    code = ("import sys; from probekit import get_plugin_manager; get_plugin_manager(); "
            f"print(','.join(m for m in {tuple(heavy)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().split(",") if m]


def listed_types(kind: str) -> dict[str, str]:
    """`probekit list KIND` run as a command: name -> the rest of its line."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "probekit", "list", kind], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0]: line for line in out.splitlines() if line.strip() and not line.startswith(" ")}


# -- the pytest plugin ------------------------------------------------------------------------------
def pytest_configure(config: Any) -> None:
    """Register the `slow` marker (longer end-to-end tests); figures render without a display."""
    config.addinivalue_line("markers", "slow: longer end-to-end tests")
    os.environ.setdefault("MPLBACKEND", "Agg")


if pytest is not None:

    @pytest.fixture(autouse=True)
    def probekit_cache(tmp_path_factory: Any, monkeypatch: Any) -> Iterator[Any]:
        """Feature and model caches in the test session's temporary directory, not the user's home."""
        path = tmp_path_factory.getbasetemp() / "probekit-cache"
        monkeypatch.setenv("PROBEKIT_CACHE", str(path))
        yield path
