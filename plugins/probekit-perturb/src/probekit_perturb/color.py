"""Colour helpers of the perturbations: the core's RGB <-> HSV, and a luma that refuses grayscale input."""

from __future__ import annotations

import torch

from probekit import hsv_to_rgb, rgb_to_hsv
from probekit import luminance as _luma

__all__ = ["hsv_to_rgb", "luminance", "rgb_to_hsv"]


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma (N, 1, H, W) of RGB images, the weights of PIL's `convert('L')`."""
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"luminance needs RGB images of shape (N, 3, H, W), got {tuple(rgb.shape)}; grayscale "
                         "images (C = 1) are already luminance. Load the data with `channels: 3` for colour.")
    return _luma(rgb)
