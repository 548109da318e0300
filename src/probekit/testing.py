"""Tiny real models for tests and offline examples (like captum's test models).

They are ordinary ``nn.Module`` factories, usable with the ``module`` adapter:
``model: {type: module, factory: "probekit.testing:small_cnn"}``.
"""

from __future__ import annotations

from torch import nn


def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> nn.Sequential:
    """A 3-conv CNN classifier for small images (8x8 digits to 28x28 MNIST and up).

    Module paths: ``0`` conv, ``1`` batch norm, ``2`` ReLU, ``3``-``5`` the same again,
    ``6`` 2x2 max pool, ``7`` conv, ``8`` ReLU, ``9`` global pool, ``10`` flatten, ``11`` linear head.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
    )


def mlp(in_features: int = 64, hidden: int = 64, num_classes: int = 10, depth: int = 2) -> nn.Sequential:
    """An MLP classifier on flattened images: Flatten, (Linear, ReLU) x depth, Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
