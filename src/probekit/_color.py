"""Colour spaces: RGB <-> HSV in torch, batched, on any device, differentiable almost everywhere.

Hue is in [0, 1) (a full turn), saturation and value in [0, 1]. The formulas are
the usual hexcone model (as in `colorsys` and `skimage.color`), written with
tensor operations only so that they run on CUDA tensors and pass gradients.
"""

from __future__ import annotations

import torch

_EPS = 1e-8


def _check_rgb(images: torch.Tensor, what: str) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{what} needs RGB images of shape (N, 3, H, W), got {tuple(images.shape)}; "
            "grayscale images (C = 1) have no hue or saturation. Load the data with "
            "`channels: 3` if the images are colour images."
        )


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 3, H, W) HSV with hue in [0, 1)."""
    _check_rgb(rgb, "rgb_to_hsv")
    r, g, b = rgb.unbind(1)
    maxc, argmax = rgb.max(1)
    minc = rgb.min(1).values
    delta = maxc - minc
    v = maxc
    s = delta / maxc.clamp_min(_EPS)
    d = delta.clamp_min(_EPS)
    # hue sector by which channel is largest (ties resolved as colorsys does: r, then g, then b)
    h_r = ((g - b) / d) % 6.0
    h_g = (b - r) / d + 2.0
    h_b = (r - g) / d + 4.0
    h = torch.where(argmax == 0, h_r, torch.where(argmax == 1, h_g, h_b)) / 6.0
    h = torch.where(delta > 0, h, torch.zeros_like(h)) % 1.0
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) HSV (hue in turns, any real value) -> (N, 3, H, W) RGB in [0, 1]."""
    _check_rgb(hsv, "hsv_to_rgb")
    h, s, v = hsv.unbind(1)
    h = h % 1.0
    # the closed form f(n) = v - v s max(0, min(k, 4 - k, 1)), k = (n + 6h) mod 6, for n = 5, 3, 1
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + 6.0 * h) % 6.0
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, 1)
