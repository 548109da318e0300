"""A flipped byte in any checkpoint the length-generalization probe writes is detected, logged and
recomputed: a finished run is copied, one kind of its checkpoint files is damaged, and the resumed run
must name the files in its log and end with exactly the results of the undamaged run."""

from __future__ import annotations

import pytest
import torch

from probekit.testing import damage_and_resume, finished_run, unmatched_files

SPEC = {
    "name": "lg-damage", "seed": 0, "device": "cpu", "data": {"type": "digits", "limit": 300},
    "probe": {"type": "length-generalization", "variants": ["mamba", "transformer"], "train_lengths": [2, 6],
              "eval_lengths": [2, 4, 12], "prefix_lengths": [1, 4, 12], "patch_size": 2, "queries": 6,
              "d_model": 8, "n_layers": 2, "state_size": 4, "epochs": 2, "steps_per_epoch": 3,
              "batch_size": "auto", "lr": 3e-3, "eval_images": 24},
}
MEMORY = 2**20  # what batch_size auto sees: 1 MiB, so that a batch is smaller than the training set

# kind -> (files to damage, what the log says)
KINDS = {
    "training state of a variant": ("checkpoints/lengthgen-*.pt", "training again from the start"),
    "batch size record": ("checkpoints/batch-size-*.json", "searching again"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread (for the finished run and the resumed ones alike)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run and its cache."""
    return finished_run(SPEC, tmp_path_factory.mktemp("finished"), memory=MEMORY)


def test_every_checkpoint_file_kind_is_covered(finished):
    assert unmatched_files(finished[0], [k for k, _ in KINDS.values()]) == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_flipped_byte_is_logged_and_recomputed(kind, finished, tmp_path):
    pattern, says = KINDS[kind]
    damage_and_resume(SPEC, finished[0], tmp_path / "run", [pattern], expect=says, cache=finished[1],
                      memory=MEMORY)
