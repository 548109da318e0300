"""The tradeoff probe's training options shared with `model.train`: `grad_clip`, `keep`, `val_fraction`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from probekit import SpecError, load_spec
from probekit.testing import execute_run as execute
from probekit.testing import prepare_run as prepare

POINT = "tradeoff-fc-medium-L64-lam0.0"  # the one sweep point of _spec()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models


def _spec(**probe: Any) -> dict[str, Any]:
    """One sweep point (classification only) on 200 digits: a 64-wide latent overfits them within 30 epochs."""
    base = {"type": "tradeoff", "families": ["fc-medium"], "latents": [64], "lambdas": [0.0], "epochs": 3,
            "batch_size": 32, "lr": 3e-3, "reconstructions": 0, "baselines": []}
    base.update(probe)
    return {"name": "t", "seed": 0, "device": "cpu", "data": {"type": "digits", "limit": 200}, "probe": base}


def _run(tmp_path: Path, name: str, **probe: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json and the sweep point's record (train and validation losses, test numbers)."""
    run_dir = tmp_path / name
    metrics = execute(prepare(load_spec(_spec(**probe)), run_dir, quiet=True))
    return metrics, json.loads((run_dir / "checkpoints" / f"{POINT}.json").read_text())


def test_options_are_validated_with_their_key_path() -> None:
    for bad, key in (({"grad_clip": 0}, "probe.grad_clip"), ({"keep": "first"}, "probe.keep"),
                     ({"val_fraction": 1.0}, "probe.val_fraction")):
        with pytest.raises(SpecError) as err:
            load_spec(_spec(**bad))
        assert key in str(err.value)
    options = load_spec(_spec()).options["probe"]
    assert (options["grad_clip"], options["keep"], options["val_fraction"]) == (None, "last", 0.1)


def test_grad_clip_changes_training_only_when_it_binds(tmp_path: Path) -> None:
    _, none = _run(tmp_path, "none")
    _, huge = _run(tmp_path, "huge", grad_clip=1e6)
    _, tiny = _run(tmp_path, "tiny", grad_clip=1e-10)
    # a bound far above every gradient norm scales by exactly 1: the same trajectory and results
    assert huge["train_losses"] == none["train_losses"]
    assert (huge["test_ce"], huge["accuracy"]) == (none["test_ce"], none["accuracy"])
    # a bound far below the gradient norms: Adam's step g / (sqrt(v) + eps) shrinks once g is under its
    # eps (1e-8), so the loss stays near its start (ln 10 = 2.30 for 10 classes) while unclipped it falls
    assert none["train_losses"][-1] < 1.6
    assert tiny["train_losses"][-1] > 2.2


def test_keep_best_restores_the_best_validation_epoch(tmp_path: Path) -> None:
    epochs = 30
    metrics, best = _run(tmp_path, "best", epochs=epochs, keep="best", val_fraction=0.3)
    val = best["val_losses"]
    assert len(val) == epochs
    k = min(range(epochs), key=val.__getitem__) + 1
    assert best["best_epoch"] == k == metrics["best_epoch"]["fc-medium L64 lambda=0"]
    assert k <= epochs - 3, f"the validation loss should rise after its minimum; best epoch {k}, losses {val}"
    # training only up to the best epoch ends on the same weights: every test number is identical
    _, short = _run(tmp_path, "short", epochs=k, keep="best", val_fraction=0.3)
    assert short["val_losses"] == val[:k] and short["best_epoch"] == k
    for key in ("test_mse", "test_ce", "accuracy", "readout_accuracy"):
        assert best[key] == short[key], key
    # ... and differs from the last epoch's weights
    _, last = _run(tmp_path, "last", epochs=epochs, keep="last")
    assert "best_epoch" not in last and last["val_losses"] == []
    assert last["test_ce"] != best["test_ce"]
    # 30 % of the 200 training digits were held out from training
    assert best["config"]["val_fraction"] == 0.3 and best["config"]["keep"] == "best"
