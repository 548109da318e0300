"""Gradient routing of the tradeoff loss `lambda * MSE + (1 - lambda) * CE`.

The decoder is trained by the MSE only and the classifier by the CE only, each with its full
gradient; lambda weights only what reaches the encoder. `scale_grad` is the identity in the
forward pass and multiplies the gradient by a constant in the backward pass, so

    recon  = decoder(scale_grad(z, lambda))
    logits = classifier(scale_grad(z, 1 - lambda))
    loss   = MSE(recon) + CE(logits)

gives the decoder d MSE, the classifier d CE, and the encoder
`lambda * d MSE / dz + (1 - lambda) * d CE / dz`. A scale of 0 gives exact zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from probekit_tradeoff._models import TradeoffModel


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if ctx.scale == 0.0:  # exact zeros, also where grad holds inf
            return torch.zeros_like(grad), None
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` in the forward pass; its gradient times `scale` in the backward pass."""
    return _ScaleGrad.apply(x, float(scale))


@dataclass
class RoutedLosses:
    """The losses of one batch. `loss` has the value `lambda * mse + (1 - lambda) * ce` and the
    routed gradient described in the module docstring."""

    loss: torch.Tensor
    mse: torch.Tensor
    ce: torch.Tensor
    recon: torch.Tensor
    logits: torch.Tensor


def routed_losses(
    model: TradeoffModel,
    inputs: torch.Tensor,
    target: torch.Tensor,
    labels: torch.Tensor,
    lam: float,
    *,
    encode: Any = None,
) -> RoutedLosses:
    """Run `model` (encoder, decoder, classifier) on a batch with gradient routing.

    Args:
        inputs: the encoder's input (pixels in [-1, 1], or an attached model's states).
        target: the pixels to reconstruct, in [-1, 1].
        labels: integer class labels.
        lam: lambda in [0, 1].
        encode: optional `encode(inputs) -> z` replacing `model.encoder` (attached backbones).
    """
    z = encode(inputs) if encode is not None else model.encoder(inputs)
    recon = model.decoder(scale_grad(z, lam))
    logits = model.classifier(scale_grad(z, 1.0 - lam))
    mse = F.mse_loss(recon, target)
    ce = F.cross_entropy(logits, labels)
    routed = mse + ce
    # The value reported (and checked for NaN by the trainer) is the study's weighted loss; the
    # detached correction leaves the routed gradient untouched.
    weighted = lam * mse + (1.0 - lam) * ce
    loss = routed + (weighted - routed).detach()
    return RoutedLosses(loss, mse, ce, recon, logits)
