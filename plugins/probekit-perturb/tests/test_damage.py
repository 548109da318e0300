"""A flipped byte in a checkpoint of the robustness probe is detected, logged and recomputed.

A finished run is copied, its per-perturbation checkpoints are damaged, and the resumed run must
name them in its log and end with exactly the results of the undamaged run.
"""

from __future__ import annotations

import pytest

from probekit.testing import damage_and_resume, finished_run, small_cnn_section

SPEC = {
    "name": "robustness-damage", "seed": 0, "device": "cpu",
    "model": small_cnn_section(),
    "data": {"type": "digits", "size": 16, "batch_size": 32},
    "probe": {"type": "robustness", "layers": ["2", "8"], "limit": 64, "show": 2,
              "perturbations": [{"type": "noise", "std": 0.3}, {"type": "occlusion", "size": 4, "count": 2}]},
    "metrics": ["mse"],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run and its cache."""
    return finished_run(SPEC, tmp_path_factory.mktemp("finished"))


def test_every_checkpoint_file_kind_is_covered(finished):
    written = {p.name for p in (finished[0] / "checkpoints").rglob("*") if p.is_file()}
    assert written == {"robustness-0.json", "robustness-1.json"}


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_a_flipped_byte_is_logged_and_recomputed(where, finished, tmp_path):
    log = damage_and_resume(SPEC, finished[0], tmp_path / "run", ["checkpoints/robustness-*.json"], where=where,
                            expect="computing 'noise 0.3' again", cache=finished[1])
    assert "computing 'occlusion size=4 count=2' again" in log and "resumed from its checkpoint" not in log
