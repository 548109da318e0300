import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pm():
    """A fresh process-wide plugin manager, restored afterwards."""
    from probekit import _plugins as plugins

    plugins.reset_plugin_manager()
    yield plugins.get_plugin_manager()
    plugins.reset_plugin_manager()


def _digits_spec(**probe):
    """A small spec: small_cnn trained briefly on digits, linear probe over two layers."""
    return {
        "name": "t",
        "seed": 0,
        "device": "cpu",
        "model": {"type": "module", "factory": "probekit.testing:small_cnn",
                  "kwargs": {"in_channels": 1, "num_classes": 10, "width": 8},
                  "train": {"epochs": 2, "lr": 0.003, "batch_size": 64}},
        "data": {"type": "digits", "batch_size": 128},
        "probe": {"type": "linear", "layers": ["5", "9"], **probe},
        "metrics": ["accuracy"],
    }


@pytest.fixture
def digits_spec():
    """Factory of a small digits spec (see _digits_spec)."""
    return _digits_spec
