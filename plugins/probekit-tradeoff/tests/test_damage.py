"""A flipped byte in any checkpoint the tradeoff probe writes is detected, logged and recomputed.

A finished sweep (two lambdas, a PCA and a random-projection baseline, batch_size auto) is copied,
one kind of its checkpoint files is damaged, and the resumed run must name the files in its log and
end with exactly the results of the undamaged run. The training state of a point exists only while
the point trains: it is damaged in a run stopped mid-point.
"""

from __future__ import annotations

import pytest

import probekit
from probekit import CorruptCheckpointError
from probekit.testing import (
    damage_and_resume,
    finished_run,
    flip_byte,
    limit_memory,
    read_metrics,
    stop_when,
    unmatched_files,
)

SPEC = {
    "name": "tradeoff-damage", "seed": 0, "device": "cpu", "data": {"type": "digits", "limit": 400},
    "probe": {"type": "tradeoff", "families": ["fc-small"], "latents": [4], "lambdas": [0.0, 1.0], "epochs": 10,
              "lr": 1e-2, "batch_size": "auto", "baselines": ["pca", "random"], "reconstructions": 2},
}

MEMORY = 2**16  # what batch_size auto sees: 64 KiB, so that a batch is smaller than the training set

# kind -> (files to damage, files to delete so that the damaged ones are read on resume, what the log says)
KINDS = {
    "point results": (["checkpoints/tradeoff-fc-small-*.json"], [], "training the point again"),
    "point weights": (["checkpoints/tradeoff-fc-small-*.safetensors"], [], "training the point again"),
    "baseline results": (["checkpoints/tradeoff-pca-*.json", "checkpoints/tradeoff-random-*.json"], [],
                         "computing it again"),
    "batch size record": (["checkpoints/batch-size-*.json"], ["checkpoints/tradeoff-fc-small-L4-lam1.0.json"],
                          "searching again"),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run and its cache."""
    return finished_run(SPEC, tmp_path_factory.mktemp("finished"), memory=MEMORY)


def test_every_checkpoint_file_kind_is_covered(finished):
    assert read_metrics(finished[0])["curves"]["fc-small"]["L4"]["lambda=0"]["accuracy"] > 0.5  # it learned
    assert unmatched_files(finished[0], [p for damage, _, _ in KINDS.values() for p in damage]) == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_flipped_byte_is_logged_and_recomputed(kind, finished, tmp_path):
    damage, remove, says = KINDS[kind]
    damage_and_resume(SPEC, finished[0], tmp_path / "run", damage, remove=remove, expect=says, cache=finished[1],
                      memory=MEMORY)


def test_a_damaged_training_state_of_a_point_is_trained_again(finished, tmp_path, monkeypatch):
    run_dir, cache = finished
    monkeypatch.setenv("PROBEKIT_CACHE", str(cache))
    limit_memory(monkeypatch, MEMORY)
    stopped = tmp_path / "stopped"
    (state,) = stop_when(SPEC, stopped, "checkpoints/tradeoff-*.pt")  # stopped after the first epoch
    assert not (stopped / "metrics.json").exists()
    flip_byte(state)
    probekit.run(SPEC, stopped, resume=True)
    assert read_metrics(stopped) == read_metrics(run_dir)
    log = (stopped / "log.txt").read_text()
    assert f"{state.name} does not match its checksum" in log and "training again from the start" in log


def test_load_point_weights_refuses_damaged_weights(finished, tmp_path):
    import shutil

    from probekit_tradeoff._probe import load_point_weights

    run_dir, _ = finished
    assert load_point_weights(run_dir, "fc-small", 4, 0.0)  # the weights of a finished point
    shutil.copytree(run_dir / "checkpoints", tmp_path / "checkpoints")
    (path,) = (tmp_path / "checkpoints").glob("tradeoff-fc-small-L4-lam0.0.safetensors")
    flip_byte(path, 0.9)
    with pytest.raises(CorruptCheckpointError, match=path.name):
        load_point_weights(tmp_path, "fc-small", 4, 0.0)
