"""Plugins' `logging` messages reach the run's log.txt (and stay out of it outside a run)."""

from __future__ import annotations

import logging

import probekit
from probekit import hookimpl


class _Chatty:
    @hookimpl
    def probekit_run_started(self, run):
        logging.getLogger("probekit.chatty").warning("a plugin's warning through logging")
        logging.getLogger("probekit.chatty").info("a plugin's note through logging")


def test_plugin_log_records_reach_log_txt(tmp_path, pm):
    plugin = _Chatty()
    pm.register(plugin, name="chatty")
    spec = {"name": "log", "model": {"type": "module", "factory": "probekit.testing:mlp",
                                     "kwargs": {"in_features": 64, "hidden": 8}},
            "data": {"type": "digits", "batch_size": 64, "limit": 64, "test_limit": 32},
            "probe": {"type": "linear", "layers": ["2"]}}
    probekit.run(spec, tmp_path / "run")
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "a plugin's warning through logging" in log and "a plugin's note through logging" in log
    # after the run the logger is back to the library default: no handler of the finished run
    assert not logging.getLogger("probekit").handlers and logging.getLogger("probekit").propagate
