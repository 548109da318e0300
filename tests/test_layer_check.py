"""Every probe refuses an unknown layer with the key path, before any model is trained."""

from __future__ import annotations

import subprocess
import sys

import pytest

import probekit
from probekit import SpecError, get_plugin_manager

# a frozen model that would be trained first (model.train), so a late check would train before failing
MODEL = {"type": "module", "factory": "probekit.testing:mlp", "kwargs": {"in_features": 64, "hidden": 16},
         "train": {"epochs": 1}}
DATA = {"type": "digits", "batch_size": 64, "limit": 64, "test_limit": 32}

# probe type -> (probe section with one unknown layer, the key path the error must name)
CASES = {
    "linear": ({"type": "linear", "layers": ["1", "nope"]}, "probe.layers[1]"),
    "inversion": ({"type": "inversion", "layers": ["nope"], "epochs": 1}, "probe.layers[0]"),
    "robustness": ({"type": "robustness", "layers": ["1", "2", "nope"], "perturbations": [{"type": "grayscale"}]},
                   "probe.layers[2]"),
    "tradeoff": ({"type": "tradeoff", "families": ["fc-small"], "latents": [4], "lambdas": [0.5], "epochs": 1,
                  "encoder": {"model": {"type": "module", "factory": "probekit.testing:mlp",
                                        "kwargs": {"in_features": 64}}, "layer": "nope"}},
                 "probe.encoder.layer"),
}


def _probes_with_layers() -> list[str]:
    pm = get_plugin_manager()
    metas = {n: pm.get("probes", n).meta for n in pm.names("probes")}
    return [n for n, m in metas.items() if m.get("needs_model", True) and m.get("layer_options", ("layers",))]


def test_every_installed_probe_that_takes_layers_is_covered():
    missing = sorted(set(_probes_with_layers()) - set(CASES) - {"norms"})  # norms: the template's example
    assert not missing, f"add a case for {missing} (or register it with layer_options=())"


@pytest.mark.parametrize("probe_type", sorted(CASES))
def test_unknown_layer_is_a_spec_error_before_training(probe_type, tmp_path, monkeypatch):
    if probe_type not in get_plugin_manager().names("probes"):
        pytest.skip(f"probe {probe_type} is not installed")
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    section, path = CASES[probe_type]
    spec = {"name": "layers", "model": MODEL, "data": DATA, "probe": section}
    if probe_type == "tradeoff":
        spec.pop("model")
    with pytest.raises(SpecError) as err:
        probekit.run(spec, tmp_path / "run")
    assert err.value.path == path and "nope" in str(err.value)
    assert not list((tmp_path / "cache").rglob("*.safetensors")), "a model was trained before the check"
    assert not list((tmp_path / "run").rglob("checkpoints/*.*")), "a probe trained before the check"


def test_cli_exits_2_naming_the_key_and_the_valid_layers(tmp_path):
    import yaml

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "layers", "model": MODEL, "data": DATA,
                                    "probe": {"type": "linear", "layers": ["1", "nope"]}}))
    for extra in ([], ["--dry-run"]):
        res = subprocess.run([sys.executable, "-m", "probekit", "run", str(spec), "-o", str(tmp_path / "r"), "-q",
                              *extra], capture_output=True, text=True,
                             env={**__import__("os").environ, "PROBEKIT_CACHE": str(tmp_path / "cache")})
        assert res.returncode == 2, res.stderr
        assert "probe.layers[1]: unknown layer 'nope'" in res.stderr and "its layers are: 0, 1, 2" in res.stderr
        assert "Traceback" not in res.stderr
