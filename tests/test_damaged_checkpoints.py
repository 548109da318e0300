"""A flipped byte in any checkpoint or cached file of the core is detected, logged and recomputed.

Every kind of file a run of the core's probe (the linear probe, with `model.train`) writes into its
run directory and into the cache is damaged in turn after a finished run; the resumed run must
name the damaged file in its log and end with exactly the results of the undamaged run. The
plugins' files are covered the same way in each plugin's tests (`test_damage.py`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from probekit import (
    CorruptCheckpointError,
    load_safetensors,
    read_checked_json,
    save_safetensors,
    write_checked_json,
)
from probekit.testing import damage_and_resume, finished_run, flip_byte, read_metrics, unmatched_files

SPEC = {
    "name": "damage", "seed": 0, "device": "cpu",
    "model": {"type": "module", "factory": "probekit.testing:mlp", "kwargs": {"in_features": 64, "hidden": 32},
              "train": {"epochs": 10, "lr": 0.05, "batch_size": "auto"}},
    "data": {"type": "digits", "limit": 300, "test_limit": 100},
    "probe": {"type": "linear", "layers": ["2"], "C": 1.0, "max_iter": 200},
    "metrics": ["accuracy"],
}

# kind -> (files to damage, files to delete so that the damaged ones are read on resume, what the log says);
# "{cache}" is the run's cache folder
KINDS = {
    "linear classifier": (["checkpoints/linear-*.pt"], [], "does not match its checksum"),
    "model.train training state": (["checkpoints/model-train.pt"], ["{cache}/models/*"],
                                   "does not match its checksum"),
    "batch size record": (["checkpoints/batch-size-*.json"], ["{cache}/models/*"], "searching again"),
    "cached weights": (["{cache}/models/*.safetensors"], [], "not usable"),
    "cached weights record": (["{cache}/models/*.json"], [], "not usable"),
    "feature cache shard": (["{cache}/features/*/*.bin"], [], "does not match its checksum"),
    "feature cache manifest": (["{cache}/features/*/manifest.json"], [], "is damaged"),
}
# files that hold no state to damage: the cache's lock files (empty, only locked)
NOT_STATE = ["{cache}/features/*.lock"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run and its own cache: (run directory, cache folder)."""
    return finished_run(SPEC, tmp_path_factory.mktemp("finished"))


def test_the_model_learned_and_every_file_kind_is_covered(finished):
    run_dir, cache = finished
    results = read_metrics(run_dir)
    assert results["model_train"]["test_accuracy"] > 0.8  # a real, trained model
    assert results["accuracy"]["2"] > 0.8
    patterns = [p for damage, _, _ in KINDS.values() for p in damage] + NOT_STATE
    in_cache = [p.removeprefix("{cache}/") for p in patterns if p.startswith("{cache}/")]
    assert unmatched_files(run_dir, [p for p in patterns if not p.startswith("{cache}/")]) == []
    assert unmatched_files(cache, in_cache, below=".") == []
    assert (run_dir / "checkpoints").is_dir() and (cache / "models").is_dir()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_flipped_byte_is_logged_and_recomputed(kind, finished, tmp_path):
    run_dir, cache = finished
    work_cache = tmp_path / "cache"  # the cache is damaged too: a copy
    shutil.copytree(cache, work_cache)
    damage, remove, says = KINDS[kind]
    damage_and_resume(SPEC, run_dir, tmp_path / "run", [p.format(cache=work_cache) for p in damage],
                      remove=[p.format(cache=work_cache) for p in remove], expect=says, cache=work_cache)


# -- the helpers every checkpoint of a plugin uses -----------------------------------------------------
def _every_flip(path: Path, read) -> list[tuple[int, int]]:
    """(offset, bit) of every single-bit flip of `path` that `read` does not reject."""
    data = path.read_bytes()
    undetected = []
    for i in range(len(data)):
        for bit in (0x01, 0x04, 0x20, 0x40, 0x80):
            damaged = bytearray(data)
            damaged[i] ^= bit
            path.write_bytes(bytes(damaged))
            try:
                read(path)
            except CorruptCheckpointError:
                continue
            undetected.append((i, bit))
    path.write_bytes(data)
    return undetected


def test_checked_json_round_trips_and_rejects_every_flip_that_changes_a_value(tmp_path):
    data = {"rows": [{"layer": "block.0", "value": 0.8125, "n": 3, "ok": True, "none": None}],
            "tensor": torch.tensor([0.5, 2.0]), "pair": (1, 2), "text": "caf\u00e9"}
    path = tmp_path / "c.json"
    write_checked_json(path, data)
    expected = {**data, "tensor": [0.5, 2.0], "pair": [1, 2]}
    assert read_checked_json(path) == expected
    assert '"checksum"' in path.read_text()  # ordinary JSON with one more key
    undetected = _every_flip(path, read_checked_json)
    # the only flips left unnoticed change nothing JSON reads: the case of an escape's hex digit
    for i, bit in undetected:
        flipped = bytearray(path.read_bytes())
        flipped[i] ^= bit
        other = tmp_path / "o.json"
        other.write_bytes(bytes(flipped))
        assert read_checked_json(other) == expected
    assert len(undetected) <= 2


def test_checked_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checked_json(tmp_path / "missing.json")
    (tmp_path / "plain.json").write_text('{"a": 1}')
    with pytest.raises(CorruptCheckpointError, match="plain.json has no checksum"):
        read_checked_json(tmp_path / "plain.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CorruptCheckpointError, match="binary.json cannot be read"):
        read_checked_json(tmp_path / "binary.json")
    with pytest.raises(ValueError, match="checksum"):
        write_checked_json(tmp_path / "x.json", {"checksum": 1})


def test_checked_safetensors_round_trip_and_reject_every_flip(tmp_path):
    from safetensors.torch import load_file

    tensors = {"w": torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),
               "b": torch.arange(5, dtype=torch.int64), "h": torch.ones(2, dtype=torch.bfloat16)}
    path = tmp_path / "w.safetensors"
    save_safetensors(tensors, path, metadata={"note": "x"})
    for loaded in (load_safetensors(path), load_file(str(path))):  # any safetensors reader opens it
        assert loaded.keys() == tensors.keys()
        for k, v in tensors.items():
            assert torch.equal(loaded[k], v)
    assert _every_flip(path, load_safetensors) == []


def test_unchecked_safetensors_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CorruptCheckpointError, match="plain.safetensors has no checksum"):
        load_safetensors(tmp_path / "plain.safetensors")
    (tmp_path / "short.safetensors").write_bytes(b"\x01")
    with pytest.raises(CorruptCheckpointError, match="short.safetensors cannot be read"):
        load_safetensors(tmp_path / "short.safetensors")
    with pytest.raises(FileNotFoundError):
        load_safetensors(tmp_path / "missing.safetensors")


def test_flip_byte_changes_one_byte(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    flip_byte(path, 0.5)
    assert path.read_bytes() == b"01234u6789"
