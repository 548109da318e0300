"""The length-generalization probe's training: the learning-rate schedule, gradient clipping (`grad_clip`) and
`keep: best` (the options `model.train` has too)."""

from __future__ import annotations

import math

import pytest
import torch
from probekit_mamba._lengthgen import FINAL_LR_FRACTION, StudyAdam, lr_factor

from probekit import SpecError, load_spec
from probekit.testing import execute_run as execute
from probekit.testing import prepare_run as prepare


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


def test_study_adam_schedule_continues_after_a_reload():
    model = torch.nn.Linear(2, 1)
    seen = []
    opt = StudyAdam(model.parameters(), lr=1.0, weight_decay=0.0, schedule=lambda i: seen.append(i) or 0.5)
    for _ in range(3):
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
    assert seen == [0, 1, 2] and opt.param_groups[0]["lr"] == 0.5
    again = StudyAdam(model.parameters(), lr=1.0, weight_decay=0.0, schedule=lambda i: seen.append(i) or 1.0)
    again.load_state_dict(opt.state_dict())
    assert again.steps_done() == 3  # read from Adam's checkpointed state: a resumed run continues the schedule
    model(torch.ones(1, 2)).sum().backward()
    again.step()
    assert seen[-1] == 3


# -- grad_clip and keep: best, as model.train's ----------------------------------------------------------------
@pytest.fixture
def _one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spec(**probe):
    """One tiny Mamba on the digits, evaluated at one length (the options under test are about training)."""
    options = {"type": "length-generalization", "variants": ["mamba"], "train_lengths": [2, 6],
               "eval_lengths": [2], "prefix_lengths": [1], "patch_size": 2, "queries": 6, "d_model": 8,
               "n_layers": 2, "state_size": 4, "epochs": 2, "steps_per_epoch": 3, "batch_size": 16, "lr": 3e-3,
               "eval_images": 8}
    options.update(probe)
    return {"name": "lg", "seed": 0, "device": "cpu", "data": {"type": "digits"}, "probe": options}


def _run(tmp_path, name, **probe):
    run = prepare(load_spec(_spec(**probe)), tmp_path / name, quiet=True)
    metrics = execute(run)
    return run.probe, metrics


def test_training_options_are_validated_with_their_key_path():
    for bad, key in (({"grad_clip": 0}, "probe.grad_clip"), ({"keep": "first"}, "probe.keep"),
                     ({"val_fraction": 0}, "probe.val_fraction")):
        with pytest.raises(SpecError) as err:
            load_spec(_spec(**bad))
        assert key in str(err.value)
    with pytest.raises(SpecError, match="`clip_grad` is now `grad_clip`"):  # the option's former name
        load_spec(_spec(clip_grad=1.0))
    options = load_spec(_spec()).options["probe"]
    assert (options["grad_clip"], options["keep"], options["val_fraction"]) == (1.0, "last", 0.1)


@pytest.mark.usefixtures("_one_thread")
def test_grad_clip_changes_training_only_when_it_binds(tmp_path):
    none, _ = _run(tmp_path, "none", grad_clip=None, lr=5e-2)
    huge, _ = _run(tmp_path, "huge", grad_clip=1e6, lr=5e-2)
    tiny, _ = _run(tmp_path, "tiny", grad_clip=1e-10, lr=5e-2)
    # a bound far above every gradient norm scales by exactly 1: the same trajectory
    assert huge.losses["mamba"] == none.losses["mamba"]
    # far below: Adam's step g / (sqrt(v) + eps) shrinks once g is under its eps (1e-8), so the model
    # barely moves from its initial weights (MSE about 0.2) while unclipped it learns (about 0.14)
    assert tiny.losses["mamba"][-1] > none.losses["mamba"][-1] + 0.03, (tiny.losses, none.losses)


@pytest.mark.usefixtures("_one_thread")
def test_keep_best_restores_the_best_validation_epoch(tmp_path):
    # a learning rate warmed up linearly to 1.0 over all 18 steps: the model first learns, then the
    # growing steps wreck it, so the validation MSE has its minimum before the last epoch
    schedule = {"lr": 1.0, "warmup_steps": 18, "keep": "best"}
    probe, metrics = _run(tmp_path, "best", epochs=6, **schedule)
    val = probe.val_losses["mamba"]
    assert len(val) == 6
    k = min(range(6), key=val.__getitem__) + 1
    assert metrics["best_epoch"] == {"mamba": k} and probe.best_epochs == {"mamba": k}
    assert k < 6 and val[-1] > 1.1 * val[k - 1], val
    # the warm-up's learning rate per step does not depend on the epochs: training only k epochs
    # reaches the same weights, so every evaluated number is identical
    short, again = _run(tmp_path, "short", epochs=k, **schedule)
    assert short.val_losses["mamba"] == val[:k] and again["best_epoch"] == {"mamba": k}
    for a, b in zip(short.models["mamba"].state_dict().values(), probe.models["mamba"].state_dict().values()):
        assert torch.equal(a, b)
    assert again["mse_train_range"] == metrics["mse_train_range"]
    assert again["mse_train_range"]["mamba"] != pytest.approx(_run(tmp_path, "last", epochs=6, **{
        **schedule, "keep": "last"})[1]["mse_train_range"]["mamba"], rel=1e-3)
    # the report says which weights were kept
    assert f"mamba: epoch {k}" in (tmp_path / "best" / "report.md").read_text()
