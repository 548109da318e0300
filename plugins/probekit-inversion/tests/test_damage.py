"""A flipped byte in any checkpoint the inversion probe writes is detected, logged and recomputed.

A finished run (modular inverses with chained targets, direct inverses, validation, batch_size
auto) is copied, one kind of its checkpoint files is damaged, and the resumed run must name the
files in its log and end with exactly the results of the undamaged run.
"""

from __future__ import annotations

import pytest

from probekit.testing import damage_and_resume, finished_run, small_cnn_section, unmatched_files

SPEC = {
    "name": "inv-damage", "seed": 0, "device": "cpu",
    "model": small_cnn_section(),
    "data": {"type": "digits", "limit": 160, "test_limit": 40, "batch_size": 64},
    "probe": {"type": "inversion", "layers": ["2", "9"], "epochs": 2, "batch_size": "auto",
              "inverses": ["modular", "direct"], "target": "chained", "validation": 0.2},
    "metrics": ["mse"],
}

# kind -> (files to damage, what the log says)
KINDS = {
    "modular inverse training state": ("checkpoints/inverse-*.pt", "training again from the start"),
    "modular inverse best epoch": ("checkpoints/inverse-*.pt.best", "training this module again"),
    "direct inverse training state": ("checkpoints/direct-*.pt", "training again from the start"),
    "direct inverse best epoch": ("checkpoints/direct-*.pt.best", "training this module again"),
    "batch size record": ("checkpoints/batch-size-*.json", "searching again"),
    "chained prediction cache shard": ("checkpoints/chained/*/*.bin", "computing it again"),
    "chained prediction cache manifest": ("checkpoints/chained/*/manifest.json", "computing it again"),
}
NOT_STATE = ["checkpoints/chained/*.lock"]  # empty lock files


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run and its cache."""
    return finished_run(SPEC, tmp_path_factory.mktemp("finished"))


def test_every_checkpoint_file_kind_is_covered(finished):
    assert unmatched_files(finished[0], [k for k, _ in KINDS.values()] + NOT_STATE) == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_flipped_byte_is_logged_and_recomputed(kind, finished, tmp_path):
    pattern, says = KINDS[kind]
    damage_and_resume(SPEC, finished[0], tmp_path / "run", [pattern], expect=says, cache=finished[1])
