"""The length-generalization probe's optimiser: the study's gradient clipping and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from probekit_mamba._lengthgen import FINAL_LR_FRACTION, StudyAdam, lr_factor


def test_lr_factor_warmup_then_cosine():
    total, warmup = 100, 10
    assert [lr_factor(i, total, warmup, "cosine") for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, total, warmup, "cosine") == pytest.approx(1.0)  # the decay starts at lr
    assert lr_factor(total - 1, total, warmup, "cosine") == pytest.approx(FINAL_LR_FRACTION)  # ends at lr / 20
    middle = warmup + (total - warmup - 1) / 2
    assert lr_factor(int(middle), total, warmup, "cosine") == pytest.approx(
        FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * int(middle - warmup)
                                                                           / (total - warmup - 1))))
    values = [lr_factor(i, total, warmup, "cosine") for i in range(warmup, total)]
    assert all(x >= y for x, y in zip(values, values[1:]))  # monotone decay
    assert [lr_factor(i, total, 0, "constant") for i in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert lr_factor(1, total, 4, "constant") == pytest.approx(0.5)


def _model_and_grads():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    loss = (model(torch.randn(8, 4)) * 100).pow(2).mean()  # large gradients: clipping acts
    loss.backward()
    return model


def test_study_adam_clips_the_gradient_norm_before_the_step():
    clipped = _model_and_grads()
    reference = _model_and_grads()
    norm = torch.nn.utils.clip_grad_norm_(list(reference.parameters()), 1.0)  # clip by hand, then plain Adam
    assert float(norm) > 1.0
    StudyAdam(clipped.parameters(), lr=0.1, weight_decay=0.0, clip=1.0, schedule=lambda i: 1.0).step()
    torch.optim.Adam(reference.parameters(), lr=0.1).step()
    for a, b in zip(clipped.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in clipped.parameters()))
    assert float(total) == pytest.approx(1.0, rel=1e-5)  # the gradients left behind are the clipped ones


def test_study_adam_schedule_continues_after_a_reload():
    model = torch.nn.Linear(2, 1)
    seen = []
    opt = StudyAdam(model.parameters(), lr=1.0, weight_decay=0.0, clip=None, schedule=lambda i: seen.append(i) or 0.5)
    for _ in range(3):
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
    assert seen == [0, 1, 2] and opt.param_groups[0]["lr"] == 0.5
    again = StudyAdam(model.parameters(), lr=1.0, weight_decay=0.0, clip=None, schedule=lambda i: seen.append(i) or 1.0)
    again.load_state_dict(opt.state_dict())
    assert again.steps_done() == 3  # read from Adam's checkpointed state: a resumed run continues the schedule
    model(torch.ones(1, 2)).sum().backward()
    again.step()
    assert seen[-1] == 3
