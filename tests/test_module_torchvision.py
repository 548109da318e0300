"""The `module` adapter with torchvision models by name: partial state dicts, weights' metadata, friendly names.

The ImageNet-trained AlexNet convolutions live in the shared data folder (`../shared/data/lpips` beside the
repository, see its README); the tests that need them skip when it is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import probekit
from probekit import SpecError

REPO = Path(os.environ.get("PROBEKIT_REPO") or Path(__file__).resolve().parents[1])
LPIPS_DIR = REPO.parent / "shared" / "data" / "lpips"
FEATURES = LPIPS_DIR / "alexnet_features.pth"

needs_features = pytest.mark.skipif(not FEATURES.exists(), reason=f"{FEATURES} not present")
pytest.importorskip("torchvision")


def alexnet(**options):
    return probekit.create_model("module", factory="torchvision.models:alexnet", **options)


@needs_features
def test_features_only_state_dict_loads_into_torchvision_alexnet():
    adapter = alexnet(kwargs={"weights": "IMAGENET1K_V1"}, weights=FEATURES, weights_strict=False)
    state = torch.load(FEATURES, map_location="cpu", weights_only=True)
    own = adapter.model.state_dict()
    for key, tensor in state.items():
        assert torch.equal(own[key], tensor), key
    # the classifier keeps its initial weights, and the adapter knows it
    assert sorted(adapter.untrained) == sorted(k for k in own if k.startswith("classifier."))
    # preprocessing from the weights' metadata, no download
    assert adapter.mean == pytest.approx((0.485, 0.456, 0.406)) and adapter.std == pytest.approx((0.229, 0.224, 0.225))
    assert adapter.input_shape == (3, 224, 224)
    with pytest.raises(TypeError, match="initial weights"):
        adapter.logits(torch.zeros(1, 1000))


@needs_features
def test_loaded_features_give_the_published_lpips_distances():
    """LPIPS(alex) with the adapter's convolutions swapped into lpips' network: the README's reference values."""
    lpips = pytest.importorskip("lpips")
    from PIL import Image

    adapter = alexnet(weights=FEATURES, weights_strict=False)
    loss = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    features = adapter.model.features
    for index, piece in {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}.items():
        setattr(getattr(loss.net, f"slice{piece}"), str(index), features[index])

    def image(name: str) -> torch.Tensor:
        arr = np.asarray(Image.open(LPIPS_DIR / name).convert("RGB"), dtype=np.float32)
        return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0) / 127.5 - 1

    ref = image("ex_ref.png")
    with torch.no_grad():
        d0 = float(loss(ref, image("ex_p0.png")))
        d1 = float(loss(ref, image("ex_p1.png")))
    assert d0 == pytest.approx(0.721881, abs=2e-6) and d1 == pytest.approx(0.137566, abs=2e-6)


def test_friendly_names_and_module_paths_name_the_same_layer():
    adapter = alexnet(input_shape=(3, 64, 64))
    names = [layer.name for layer in adapter.layers()]
    assert "features.0" in names and "conv1" not in names  # layers are module paths
    conv5 = adapter.layer("conv5")
    assert conv5.name == "features.10" and conv5.meta["alias"] == "conv5"
    assert {layer.meta.get("alias") for layer in adapter.layers()} >= {
        "conv1", "conv2", "conv3", "conv4", "conv5", "relu1", "pool5", "fc6", "fc7"}
    x = adapter.example_inputs(2)
    _, states = adapter.capture(x, ["conv2", "features.3"])
    assert torch.equal(states["conv2"], states["features.3"])
    # a module path that is not a friendly name stays plain
    assert "alias" not in adapter.layer("avgpool").meta


def test_a_state_dict_that_fits_nothing_is_refused(tmp_path):
    bogus = tmp_path / "bogus.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3), "encoder.bias": torch.zeros(3)}, bogus)
    with pytest.raises(SpecError, match="fit no parameter") as err:
        alexnet(weights=bogus, weights_strict=False)
    assert err.value.path == "model.weights"
    # right names, wrong shapes: refused as well
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3), "features.0.bias": torch.zeros(64)}, wrong)
    with pytest.raises(SpecError, match="wrong shapes"):
        alexnet(weights=wrong, weights_strict=False)


def test_weights_prefix_and_strict_loading(tmp_path):
    part = tmp_path / "part.pth"
    torch.save({"0.weight": torch.full((64, 3, 11, 11), 0.5), "0.bias": torch.zeros(64)}, part)
    adapter = alexnet(weights=part, weights_strict=False, weights_prefix="features.")
    assert float(adapter.model.features[0].weight.detach().mean()) == 0.5
    with pytest.raises(SpecError, match="weights_strict: false"):
        alexnet(weights=part, weights_prefix="features.")  # strict by default: the classifier is missing


def test_unknown_torchvision_weights_name_is_a_spec_error():
    with pytest.raises(SpecError, match="IMAGENET1K_V1") as err:
        alexnet(kwargs={"weights": "IMAGENET2K"})
    assert err.value.path == "model.kwargs.weights"


def test_cli_refuses_weights_that_fit_nothing_with_exit_2(tmp_path):
    bogus = tmp_path / "bogus.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, bogus)
    spec = {"name": "bogus", "device": "cpu",
            "model": {"type": "module", "factory": "torchvision.models:alexnet", "weights": str(bogus),
                      "weights_strict": False, "input_shape": [3, 64, 64]},
            "data": {"type": "photos", "size": 64, "n": 16},
            "probe": {"type": "linear", "layers": ["conv1"]}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = subprocess.run([sys.executable, "-m", "probekit", "run", str(path), "-o", str(tmp_path / "run")],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2, out.stderr
    assert "model.weights" in out.stderr and "fit no parameter" in out.stderr
    assert "Traceback" not in out.stderr


def test_dry_run_lists_friendly_names_beside_module_paths():
    from probekit import load_spec
    from probekit._dryrun import dry_run

    spec = {"name": "alex", "device": "cpu",
            "model": {"type": "module", "factory": "torchvision.models:alexnet", "input_shape": [3, 64, 64]},
            "data": {"type": "photos", "size": 64, "n": 14},
            "probe": {"type": "linear", "layers": ["conv1", "conv5"]}}
    text = dry_run(load_spec(spec))
    probed = [line.split()[:2] for line in text.splitlines() if line.startswith("  features.")]
    assert probed == [["features.0", "(conv1)"], ["features.10", "(conv5)"]]
    assert "conv5 = features.10" in text and "fc7 = classifier.4" in text
