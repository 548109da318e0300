# Offline before transformers reads these at import; caches, markers and the figure backend come from
# probekit.testing, a pytest plugin that probekit-core installs.
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One torch thread: on cores shared with other jobs, spinning OpenMP threads make tiny ops 10-30x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# the test helpers module lives next to this file
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def test_models():
    """Register the test adapters (tests/helpers.py) as model types for one test."""
    from inversion_helpers import Suggestions, TestModels

    from probekit import get_plugin_manager

    pm = get_plugin_manager()
    plugins = [(TestModels(), "inversion-test-models"), (Suggestions(), "inversion-test-defaults")]
    for plugin, name in plugins:
        pm.register(plugin, name=name)
    yield pm
    for plugin, _ in plugins:
        pm.unregister(plugin)
