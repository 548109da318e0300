import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep feature and model caches out of the user's home."""
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path_factory.getbasetemp() / "probekit-cache"))


def pytest_configure(config):
    """Register the ``slow`` marker also when the tests run outside the repository's pytest config."""
    config.addinivalue_line("markers", "slow: longer end-to-end tests")
