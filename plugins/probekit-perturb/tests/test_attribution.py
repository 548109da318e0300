"""captum attributions and metrics on models with known answers, through probekit model adapters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from probekit_perturb.attribution import Attributor, infidelity_score, sensitivity_score, token_grid
from torch import nn

import probekit
from probekit import CapturePoint, ModelAdapter


@pytest.fixture
def linear():
    """A real linear classifier on 3x4x4 images: the core's mlp with no hidden layer (Flatten, Linear)."""
    torch.manual_seed(0)
    adapter = probekit.create_model(
        "module",
        factory="probekit.testing:mlp",
        kwargs={"in_features": 48, "depth": 0, "num_classes": 3},
        input_shape=(3, 4, 4),
    )
    adapter.model.eval()
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    weight = adapter.model[1].weight  # (classes, 48)
    x = 0.2 + 0.8 * torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))  # no zero pixels
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    w = weight[y].view(6, 3, 4, 4)
    return adapter, x, y, w


def test_integrated_gradients_equals_gradient_x_input_on_a_linear_model(linear):
    adapter, x, y, w = linear
    ig = Attributor(adapter, "integrated-gradients", n_steps=8).attribute(x, y)
    gxi = Attributor(adapter, "gradient-x-input").attribute(x, y)
    assert torch.allclose(ig, gxi, atol=1e-6)
    assert torch.allclose(gxi, w * x, atol=1e-6)
    # completeness: attributions sum to f(x) - f(0)
    logits = adapter.model(x)[torch.arange(6), y] - adapter.model(torch.zeros_like(x))[torch.arange(6), y]
    assert torch.allclose(ig.sum((1, 2, 3)), logits, atol=1e-5)


def test_saliency_is_the_weight_and_occlusion_the_pixel_contribution(linear):
    adapter, x, y, w = linear
    assert torch.allclose(Attributor(adapter, "saliency", abs=False).attribute(x, y), w, atol=1e-6)
    assert torch.allclose(Attributor(adapter, "saliency").attribute(x, y), w.abs(), atol=1e-6)
    occ = Attributor(adapter, "occlusion", window=1).attribute(x, y)
    # a 1x1 window over all channels removes a pixel: its attribution is sum_c w_c x_c, on every channel
    expected = (w * x).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    assert torch.allclose(occ, expected, atol=1e-5)


@pytest.mark.parametrize(
    "method,opts",
    [("integrated-gradients", {"n_steps": 4}), ("gradient-x-input", {}), ("saliency", {"abs": False})],
)
def test_infidelity_is_zero_for_exact_attributions(linear, method, opts):
    adapter, x, y, w = linear
    attributor = Attributor(adapter, method, **opts)
    noise = probekit.create_perturbation("noise", std=0.1)
    scores = infidelity_score(attributor, x, y, noise, n_perturb_samples=5, generator=torch.Generator().manual_seed(0))
    assert scores.shape == (6,)
    assert float(scores.abs().max()) < 1e-9
    # an attribution that is off by a factor of two is unfaithful
    wrong = 2 * attributor.attribute(x, y)
    bad = infidelity_score(
        attributor,
        x,
        y,
        noise,
        n_perturb_samples=5,
        attributions=wrong,
        generator=torch.Generator().manual_seed(0),
    )
    assert float(bad.min()) > 1e-4


def test_sensitivity_known_answers(linear):
    adapter, x, y, w = linear
    noise = probekit.create_perturbation("noise", std=0.1, clip=False)
    # the gradient of a linear model does not depend on the input
    sal = Attributor(adapter, "saliency", abs=False)
    assert float(sensitivity_score(sal, x, y, noise, n_perturb_samples=4).abs().max()) < 1e-7
    # gradient x input moves by w * (x' - x): the max relative change over the same noise draws
    gxi = Attributor(adapter, "gradient-x-input")
    got = sensitivity_score(gxi, x, y, noise, n_perturb_samples=4, generator=torch.Generator().manual_seed(5))
    xr = x.repeat_interleave(4, 0)
    xp = noise(xr, generator=torch.Generator().manual_seed(5))
    wr = w.repeat_interleave(4, 0)
    rel = (wr * (xp - xr)).flatten(1).norm(dim=1) / (w * x).flatten(1).norm(dim=1).repeat_interleave(4)
    assert torch.allclose(got, rel.view(6, 4).max(1).values, atol=1e-5)


def test_attribution_metrics_bind_to_a_model(linear):
    adapter, x, y, _ = linear
    m = probekit.create_metric(
        "infidelity",
        method="gradient-x-input",
        perturbation={"type": "noise", "std": 0.05},
        n_perturb_samples=3,
    )
    with pytest.raises(RuntimeError, match=r"needs the model.*bind"):
        m.update(x, y)
    m.bind(adapter)
    m.update(x[:3], y[:3])
    m.update(x[3:], y[3:])
    assert abs(m.compute()) < 1e-9
    s = probekit.create_metric(
        "sensitivity", method="ig", perturbation={"type": "occlusion", "size": 2}, n_perturb_samples=2
    ).bind(adapter)
    s.update(x, y)
    assert s.compute() > 0.0


def test_grad_cam_on_a_feature_map_matches_its_definition():
    torch.manual_seed(0)
    adapter = probekit.create_model(
        "module",
        factory="probekit.testing:small_cnn",
        kwargs={"in_channels": 1, "width": 4},
        input_shape=(1, 12, 12),
    )
    adapter.model.eval()
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, 4, 7])
    cam = Attributor(adapter, "grad-cam", layer="8").attribute(x, y)
    acts = {}
    handle = adapter.model[8].register_forward_hook(lambda m, a, out: acts.setdefault("a", out))
    logits = adapter.model(x.requires_grad_(True))
    handle.remove()
    grads = torch.autograd.grad(logits[torch.arange(3), y].sum(), acts["a"])[0]
    ref = F.relu((grads.mean((2, 3), keepdim=True) * acts["a"]).sum(1, keepdim=True))
    ref = F.interpolate(ref, size=(12, 12), mode="bilinear", align_corners=False)
    assert cam.shape == (3, 1, 12, 12)
    assert torch.allclose(cam, ref, atol=1e-6)


class _TinyViT(nn.Module):
    """Patch embedding + class token + transformer blocks, like a ViT (tokens: 1 + 4 x 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.blocks = nn.Sequential(
            *[nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True) for _ in range(2)]
        )
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        return self.head(self.blocks(t)[:, 0])


class _TinyViTAdapter(ModelAdapter):
    type_name = "tiny-vit"
    input_shape = (3, 16, 16)

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = _TinyViT().eval()

    def capture_points(self) -> dict[str, CapturePoint]:
        return {
            "embed": CapturePoint("patch"),
            "block.0": CapturePoint("blocks.0"),
            "block.1": CapturePoint("blocks.1"),
        }


def test_token_grid_layouts():
    assert token_grid(197) == (1, 14, 14)
    assert token_grid(64) == (0, 8, 8)
    assert token_grid(201) == (5, 14, 14)  # class token + 4 registers
    assert token_grid(50, {"grid": [7, 7], "prefix_tokens": 1}) == (1, 7, 7)


def test_grad_cam_on_vit_tokens_uses_the_patch_grid_and_leaves_the_model_alone():
    adapter = _TinyViTAdapter()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 3])
    before = adapter.model(x)
    cam = Attributor(adapter, "grad-cam", layer="block.0").attribute(x, y)
    assert torch.equal(adapter.model(x), before)  # the layout hook is gone
    acts = {}
    handle = adapter.model.blocks[0].register_forward_hook(lambda m, a, out: acts.setdefault("a", out))
    logits = adapter.model(x.requires_grad_(True))
    handle.remove()
    grads = torch.autograd.grad(logits[torch.arange(2), y].sum(), acts["a"])[0]
    a = acts["a"][:, 1:].transpose(1, 2).reshape(2, 8, 4, 4)
    g = grads[:, 1:].transpose(1, 2).reshape(2, 8, 4, 4)
    ref = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    ref = F.interpolate(ref, size=(16, 16), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    assert cam.shape == (2, 3, 16, 16)
    assert torch.allclose(cam, ref, atol=1e-5)
    assert float(cam.abs().sum()) > 0
    # captum's metrics run on the grid layout too
    noise = probekit.create_perturbation("noise", std=0.05)
    attributor = Attributor(adapter, "grad-cam", layer="block.0")
    assert float(sensitivity_score(attributor, x, y, noise, n_perturb_samples=2).min()) > 0
    assert infidelity_score(attributor, x, y, noise, n_perturb_samples=2, normalize=True).shape == (2,)
    # the head reads only the class token of the last block, so its patch tokens get no gradient: zero maps
    last = Attributor(adapter, "grad-cam", layer="block.1").attribute(x, y)
    assert float(last.abs().sum()) == 0.0


def test_unknown_method_and_missing_layer_are_clear():
    adapter = _TinyViTAdapter()
    with pytest.raises(ValueError, match="unknown attribution method 'lime'"):
        Attributor(adapter, "lime")
    with pytest.raises(ValueError, match="needs a model adapter and `layer:`"):
        Attributor(adapter, "grad-cam")
    with pytest.raises(ValueError, match="block.0, block.1"):
        Attributor(adapter, "grad-cam", layer="block.9")
