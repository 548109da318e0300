"""Perturbations: HSV maths against colorsys, identities, masks, determinism, registry and devices."""

from __future__ import annotations

import colorsys

import pytest
import torch
from probekit_perturb.color import hsv_to_rgb, rgb_to_hsv
from probekit_perturb.perturbations import PERTURBATIONS

import probekit

ALL = {
    "hue-set": {"color": "green"},
    "hue-rotate": {"degrees": 120},
    "grayscale": {},
    "brightness": {"factor": 0.6},
    "saturation": {"factor": 0.3},
    "noise": {"std": 0.2},
    "occlusion": {"size": 5, "count": 2, "value": 1.0},
}


def _images(n: int = 4, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_every_name_is_registered_through_the_core_hook():
    assert set(probekit.get_plugin_manager().names("perturbations")) >= set(ALL)
    assert set(PERTURBATIONS) == set(ALL)
    for name, opts in ALL.items():
        p = probekit.create_perturbation(name, **opts)
        out = p(_images())
        assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_hsv_matches_colorsys():
    x = _images(2, 3, 8)
    hsv = rgb_to_hsv(x)
    for n, i, j in [(0, 0, 0), (0, 3, 5), (1, 7, 2), (1, 4, 4)]:
        ref = colorsys.rgb_to_hsv(*[float(v) for v in x[n, :, i, j]])
        assert torch.allclose(hsv[n, :, i, j].double(), torch.tensor(ref, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(hsv_to_rgb(hsv), x, atol=1e-6)


def test_hue_rotation_by_360_degrees_is_the_identity():
    x = _images()
    out = probekit.create_perturbation("hue-rotate", degrees=360)(x)
    assert torch.allclose(out, x, atol=1e-6)
    # three rotations by 120 degrees come back too, and one of them moves pure red to pure green
    rot = probekit.create_perturbation("hue-rotate", degrees=120)
    assert torch.allclose(rot(rot(rot(x))), x, atol=1e-5)
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    assert torch.allclose(rot(red), torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2))


def test_hue_set_sets_the_hue_and_keeps_saturation_and_value():
    x = _images()
    out = probekit.create_perturbation("hue-set", color="blue")(x)
    hsv_in, hsv_out = rgb_to_hsv(x), rgb_to_hsv(out)
    colored = hsv_in[:, 1] > 0.05
    assert torch.allclose(hsv_out[:, 0][colored], torch.full_like(hsv_out[:, 0][colored], 240 / 360), atol=1e-5)
    assert torch.allclose(hsv_out[:, 1:], hsv_in[:, 1:], atol=1e-5)
    by_degrees = probekit.create_perturbation("hue-set", color=240.0)(x)
    assert torch.equal(by_degrees, out)


def test_grayscale_leaves_gray_images_unchanged():
    gray = _images(3, 1, 16).expand(-1, 3, -1, -1).contiguous()
    g = probekit.create_perturbation("grayscale")
    assert torch.allclose(g(gray), gray, atol=1e-6)
    one_channel = _images(3, 1, 16)
    assert torch.equal(g(one_channel), one_channel)
    colour = g(_images())
    assert torch.equal(colour[:, 0], colour[:, 1]) and torch.equal(colour[:, 1], colour[:, 2])


def test_saturation_zero_equals_hsv_value_gray_and_factor_one_is_identity():
    x = _images()
    assert torch.allclose(probekit.create_perturbation("saturation", factor=1.0)(x), x, atol=1e-6)
    out = probekit.create_perturbation("saturation", factor=0.0)(x)
    assert torch.allclose(out, x.max(1, keepdim=True).values.expand(-1, 3, -1, -1), atol=1e-6)


@pytest.mark.parametrize("name", sorted(ALL))
def test_masked_perturbations_change_nothing_outside_the_mask(name: str):
    x = _images(4, 3, 16, seed=1)
    mask = torch.zeros(4, 1, 16, 16, dtype=torch.bool)
    mask[:, :, 4:12, 2:9] = True
    p = probekit.create_perturbation(name, **ALL[name])
    out = p(x, mask=mask, generator=torch.Generator().manual_seed(0))
    outside = ~mask.expand_as(x)
    assert torch.equal(out[outside], x[outside])
    unmasked = p(x, generator=torch.Generator().manual_seed(0))
    inside = mask.expand_as(x)
    assert torch.equal(out[inside], unmasked[inside])
    assert not torch.equal(out, x)  # it did change something inside
    # a (H, W) mask and a float mask act the same way
    out2 = p(x, mask=mask[0, 0].float(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out2, out)


def test_mask_of_the_wrong_size_is_a_clear_error():
    with pytest.raises(ValueError, match="does not fit images"):
        probekit.create_perturbation("noise")(_images(), mask=torch.ones(8, 8))


@pytest.mark.parametrize("name", ["noise", "occlusion"])
def test_random_perturbations_are_deterministic_under_the_seed(name: str):
    x = _images()
    a = probekit.create_perturbation(name, **ALL[name], seed=3)
    b = probekit.create_perturbation(name, **ALL[name], seed=3)
    first = a(x)
    assert torch.equal(first, b(x))
    assert not torch.equal(a(x), first)  # the own generator advances between calls
    c = probekit.create_perturbation(name, **ALL[name], seed=4)
    assert not torch.equal(c(x), first)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(a(x, generator=g1), c(x, generator=g2))  # a given generator decides


def test_occlusion_paints_count_patches_of_size():
    x = torch.full((6, 1, 20, 20), 0.5)
    out = probekit.create_perturbation("occlusion", size=4, count=1, value=0.0)(x)
    assert ((out == 0).sum((1, 2, 3)) == 16).all()


def test_hue_needs_rgb_images():
    with pytest.raises(ValueError, match="RGB images"):
        probekit.create_perturbation("hue-rotate", degrees=90)(_images(2, 1, 8))


def test_unknown_option_is_a_spec_error():
    with pytest.raises(probekit.SpecError, match="unknown key 'sdt'"):
        probekit.create_perturbation("noise", sdt=0.1)


def test_colour_perturbations_are_differentiable():
    x = _images(2, 3, 8).requires_grad_(True)
    out = probekit.create_perturbation("hue-rotate", degrees=45)(x)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("name", sorted(ALL))
def test_same_results_on_cuda(name: str):
    x = _images()
    p = probekit.create_perturbation(name, **ALL[name])
    cpu = p(x, generator=torch.Generator().manual_seed(0))
    gpu = p(x.cuda(), mask=torch.ones(16, 16, device="cuda"), generator=torch.Generator().manual_seed(0))
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)


def test_region_restricts_a_perturbation_to_a_box():
    from probekit_perturb.options import PerturbationSpec
    from probekit_perturb.perturbations import InRegion

    x = _images(2, 3, 10)
    out = InRegion(probekit.create_perturbation("brightness", factor=0.0), [0.2, 0.5, 0.4, 0.5])(x)
    inside = torch.zeros(10, 10, dtype=torch.bool)
    inside[2:6, 5:10] = True
    assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])
    assert float(out[:, :, inside].abs().max()) == 0.0
    spec = PerturbationSpec.model_validate({"type": "hue-set", "color": "red", "region": [0.25, 0.25, 0.5, 0.5]})
    assert spec.label() == "hue-set red in [0.25 0.25 0.5 0.5]"
    with pytest.raises(ValueError, match="not a box inside the image"):
        PerturbationSpec.model_validate({"type": "noise", "region": [0.5, 0.0, 0.6, 1.0]})
