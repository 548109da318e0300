"""The length-generalization probe's Mamba models scan with the fused kernel in every path: training
(with gradients), evaluation at every length, and the prefix reconstructions (batch 1)."""

from __future__ import annotations

import pytest
import torch
from probekit_mamba import _kernel

from probekit import load_spec
from probekit.testing import execute_run, prepare_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models


@pytest.mark.skipif(not _kernel.available(), reason="the fused scan kernel is unavailable here")
def test_training_evaluation_and_prefixes_use_the_kernel(tmp_path, monkeypatch):
    calls: list[tuple[bool, int, int]] = []  # (with gradient, batch, sequence length)
    scan = _kernel.mamba1_scan

    def spy(u: torch.Tensor, *args: object, **kwargs: object) -> tuple[torch.Tensor, ...]:
        calls.append((u.requires_grad and torch.is_grad_enabled(), u.shape[0], u.shape[1]))
        return scan(u, *args, **kwargs)

    monkeypatch.setattr(_kernel, "mamba1_scan", spy)
    probe = {"type": "length-generalization", "variants": ["mamba"], "train_lengths": [2, 6],
             "eval_lengths": [2, 12], "prefix_lengths": [1, 4], "patch_size": 2, "queries": 6, "d_model": 8,
             "n_layers": 2, "state_size": 4, "epochs": 1, "steps_per_epoch": 2, "batch_size": 16,
             "eval_images": 24, "eval_batch_size": 8}
    spec = {"name": "lg", "seed": 0, "device": "cpu", "data": {"type": "digits"}, "probe": probe}
    execute_run(prepare_run(load_spec(spec), tmp_path / "r"))
    layers = 2
    training = [c for c in calls if c[0]]
    evaluation = [c for c in calls if not c[0]]
    assert len(training) == 2 * layers  # 2 steps, every layer
    # the context, the delimiter and the queries: evaluation at the longest length, in eval batches
    assert (False, 8, 12 + 1 + 6) in evaluation
    # the prefix reconstructions: one image
    assert (False, 1, 1 + 1 + 6) in evaluation and (False, 1, 4 + 1 + 6) in evaluation
