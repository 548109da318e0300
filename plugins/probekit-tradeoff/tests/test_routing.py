"""Gradient routing: the decoder learns from the MSE only, the classifier from the CE only, and
lambda weights only what reaches the encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from probekit_tradeoff._models import build_model
from probekit_tradeoff._routing import routed_losses, scale_grad

FAMILIES = ["fc-small", "fc-medium", "cnn-small", "vit-tiny"]


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 12, 12, generator=g) * 2 - 1
    y = torch.randint(0, 10, (6,), generator=g)
    return x, y


def _model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(family, 4, in_shape=(1, 12, 12), image_shape=(1, 12, 12), num_classes=10)
    return model.eval()  # no dropout, and BatchNorm uses fixed statistics: the passes below are comparable


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in module.named_parameters()}


def _routed(model: torch.nn.Module, lam: float, x: torch.Tensor, y: torch.Tensor) -> dict[str, dict]:
    model.zero_grad(set_to_none=True)
    routed_losses(model, x, x, y, lam).loss.backward()
    return {part: _grads(getattr(model, part)) for part in ("encoder", "decoder", "classifier")}


def _plain(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, dict]:
    """Un-routed references: d MSE and d CE of every part, from separate backward passes."""
    out: dict[str, dict] = {}
    for name, loss_fn in (
        ("mse", lambda z: F.mse_loss(model.decoder(z), x)),
        ("ce", lambda z: F.cross_entropy(model.classifier(z), y)),
    ):
        model.zero_grad(set_to_none=True)
        loss_fn(model.encoder(x)).backward()
        out[name] = {part: _grads(getattr(model, part)) for part in ("encoder", "decoder", "classifier")}
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_lambda_one_blocks_the_classifier_gradient_from_the_encoder(family: str) -> None:
    model = _model(family)
    x, y = _batch()
    z = model.encoder(x)
    out = routed_losses(model, x, x, y, 1.0, encode=lambda _: z)
    enc_params = list(model.encoder.parameters())
    g_ce = torch.autograd.grad(out.ce, enc_params, allow_unused=True, retain_graph=True)
    # the CE reaches no encoder weight: every gradient is exactly zero
    assert all(g is None or torch.count_nonzero(g) == 0 for g in g_ce)
    # ... while the MSE does reach the encoder
    g_mse = torch.autograd.grad(out.mse, enc_params, allow_unused=True)
    assert sum(int(torch.count_nonzero(g)) for g in g_mse if g is not None) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_lambda_zero_blocks_the_decoder_gradient_from_the_encoder(family: str) -> None:
    model = _model(family)
    x, y = _batch(1)
    out = routed_losses(model, x, x, y, 0.0)
    enc_params = list(model.encoder.parameters())
    g_mse = torch.autograd.grad(out.mse, enc_params, allow_unused=True, retain_graph=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in g_mse)
    g_ce = torch.autograd.grad(out.ce, enc_params, allow_unused=True)
    assert sum(int(torch.count_nonzero(g)) for g in g_ce if g is not None) > 0


@pytest.mark.parametrize("family", ["fc-medium", "cnn-small"])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_routed_gradients_match_the_definition(family: str, lam: float) -> None:
    """decoder = d MSE, classifier = d CE (whatever lambda), encoder = lam d MSE + (1 - lam) d CE."""
    model = _model(family)
    x, y = _batch(2)
    ref = _plain(model, x, y)
    got = _routed(model, lam, x, y)
    for name, g in got["decoder"].items():
        torch.testing.assert_close(g, ref["mse"]["decoder"][name], rtol=1e-5, atol=1e-7)
    for name, g in got["classifier"].items():
        torch.testing.assert_close(g, ref["ce"]["classifier"][name], rtol=1e-5, atol=1e-7)
    for name, g in got["encoder"].items():
        expected = lam * ref["mse"]["encoder"][name] + (1 - lam) * ref["ce"]["encoder"][name]
        torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-7)
    if lam == 1.0:  # exactly the pure reconstruction gradient, no trace of the CE
        for name, g in got["encoder"].items():
            assert torch.equal(g, ref["mse"]["encoder"][name])
    if lam == 0.0:
        for name, g in got["encoder"].items():
            assert torch.equal(g, ref["ce"]["encoder"][name])


def test_decoder_and_classifier_gradients_do_not_depend_on_lambda() -> None:
    model = _model("fc-medium")
    x, y = _batch(3)
    a, b = _routed(model, 0.1, x, y), _routed(model, 0.9, x, y)
    for part in ("decoder", "classifier"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    changed = [n for n in a["encoder"] if not torch.equal(a["encoder"][n], b["encoder"][n])]
    assert changed  # while the encoder's does


def test_loss_value_is_the_weighted_loss() -> None:
    model = _model("fc-small")
    x, y = _batch(4)
    out = routed_losses(model, x, x, y, 0.25)
    torch.testing.assert_close(out.loss, 0.25 * out.mse + 0.75 * out.ce)


def test_scale_grad_is_identity_forward_and_scales_backward() -> None:
    x = torch.randn(5, requires_grad=True)
    y = scale_grad(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.arange(5.0)).sum().backward()
    assert torch.equal(x.grad, 0.5 * torch.arange(5.0))
    x.grad = None
    (scale_grad(x, 0.0) * torch.full((5,), float("inf"))).sum().backward()
    assert torch.equal(x.grad, torch.zeros(5))  # exact zeros, even against an infinite gradient
