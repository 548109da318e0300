"""LPIPS through the lpips package, with offline backbone weights, against published distances."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import probekit

# the repository root (tests -> probekit-perturb -> plugins -> root), or $PROBEKIT_REPO for installed-wheel runs
REPO = Path(os.environ.get("PROBEKIT_REPO") or Path(__file__).resolve().parents[3])


def _shared_lpips() -> Path | None:
    for candidate in (
        os.environ.get("PROBEKIT_SHARED_LPIPS"),
        REPO / ".." / "shared" / "data" / "lpips",
        REPO / "shared" / "data" / "lpips",
    ):
        if candidate and (Path(candidate) / "alexnet_features.pth").is_file():
            return Path(candidate).resolve()
    return None


SHARED = _shared_lpips()
needs_weights = pytest.mark.skipif(
    SHARED is None,
    reason="AlexNet backbone weights for LPIPS not found: expected <repo>/../shared/data/lpips/"
    "alexnet_features.pth (or set PROBEKIT_SHARED_LPIPS to its folder)",
)


@pytest.fixture(autouse=True)
def _empty_torch_hub(tmp_path, monkeypatch):
    """No torchvision weights in the hub cache and no env var, so only what a test gives is found."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("PROBEKIT_LPIPS_WEIGHTS", raising=False)


def _image(name: str) -> torch.Tensor:
    from PIL import Image

    arr = np.array(Image.open(SHARED / f"{name}.png").convert("RGB"))  # type: ignore[operator]
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255.0


@needs_weights
def test_alex_reproduces_the_published_reference_distances():
    metric = probekit.create_metric("lpips", net="alex", weights=str(SHARED / "alexnet_features.pth"))
    ref, p0, p1 = _image("ex_ref"), _image("ex_p0"), _image("ex_p1")
    d0, d1 = metric(p0, ref), metric(p1, ref)
    # published for LPIPS v0.1 alex (README of ../shared/data/lpips): 0.722 and 0.138
    assert round(d0, 3) == 0.722 and round(d1, 3) == 0.138
    assert d0 == pytest.approx(0.721881, abs=2e-6) and d1 == pytest.approx(0.137566, abs=2e-6)
    # streaming: the mean over everything seen, whatever the batching
    metric.reset()
    metric.update(torch.cat([p0, p1]), torch.cat([ref, ref]))
    assert metric.compute() == pytest.approx((d0 + d1) / 2, abs=1e-6)
    assert metric(ref, ref) == pytest.approx(0.0, abs=1e-7)


@needs_weights
def test_weights_from_the_environment_file_or_folder(monkeypatch):
    ref, p0 = _image("ex_ref"), _image("ex_p0")
    monkeypatch.setenv("PROBEKIT_LPIPS_WEIGHTS", str(SHARED))  # a folder with alexnet*.pth
    assert probekit.create_metric("lpips")(p0, ref) == pytest.approx(0.721881, abs=2e-6)
    monkeypatch.setenv("PROBEKIT_LPIPS_WEIGHTS", str(SHARED / "alexnet_features.pth"))
    assert probekit.create_metric("lpips")(p0, ref) == pytest.approx(0.721881, abs=2e-6)


@needs_weights
def test_full_torchvision_state_dict_in_the_hub_cache_is_used(tmp_path):
    """A whole torchvision alexnet() state dict (features + classifier), where torchvision caches it."""
    import torchvision
    from probekit_perturb._lpips import torchvision_file_name

    model = torchvision.models.alexnet()
    feats = torch.load(SHARED / "alexnet_features.pth", weights_only=True)
    model.load_state_dict({**model.state_dict(), **feats})
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(model.state_dict(), hub / torchvision_file_name("alex"))
    assert probekit.create_metric("lpips")(_image("ex_p1"), _image("ex_ref")) == pytest.approx(0.137566, abs=2e-6)


@needs_weights
def test_building_the_metric_does_not_move_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    probekit.create_metric("lpips", weights=str(SHARED / "alexnet_features.pth"))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_missing_weights_say_where_to_put_them(net):
    with pytest.raises(probekit.SpecError) as info:
        probekit.create_metric("lpips", net=net)
    text = str(info.value)
    assert "PROBEKIT_LPIPS_WEIGHTS" in text and "weights: PATH" in text and "checkpoints" in text
    assert {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}[net] in text


def test_missing_file_from_env_or_spec_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBEKIT_LPIPS_WEIGHTS", str(tmp_path / "nowhere.pth"))
    with pytest.raises(probekit.SpecError, match="nowhere.pth.*does not exist"):
        probekit.create_metric("lpips")
    monkeypatch.delenv("PROBEKIT_LPIPS_WEIGHTS")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "model: {type: module, factory: 'probekit.testing:small_cnn'}\n"
        "data: {type: digits}\nprobe: {type: robustness, layers: ['2'], perturbations: [{type: noise}]}\n"
        "metrics: [{type: lpips, weights: missing/alex.pth}]\n"
    )
    with pytest.raises(probekit.SpecError) as info:
        probekit.load_spec(spec)
    assert "metrics[0].weights" in str(info.value) and "missing/alex.pth" in str(info.value)


@needs_weights
def test_weights_of_another_net_are_refused_clearly():
    with pytest.raises(probekit.SpecError, match="vgg16"):
        probekit.create_metric("lpips", net="vgg", weights=str(SHARED / "alexnet_features.pth"))


@needs_weights
def test_too_small_images_are_a_clear_error():
    metric = probekit.create_metric("lpips", weights=str(SHARED / "alexnet_features.pth"))
    with pytest.raises(ValueError, match="31x31"):
        metric(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))
