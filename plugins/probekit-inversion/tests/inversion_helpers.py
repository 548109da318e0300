"""Small real models and adapters for the tests (no other plugin is imported)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from probekit import CapturePoint, ModelAdapter
from probekit.hookspecs import hookimpl


class InvertibleNet(nn.Module):
    """Flatten, orthogonal affine map, LeakyReLU, orthogonal affine map: every step is exactly invertible."""

    def __init__(self, shape: tuple[int, int, int] = (1, 4, 4), seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = shape[0] * shape[1] * shape[2]
        self.flat = nn.Flatten()
        self.lin1 = nn.Linear(n, n)
        self.act = nn.LeakyReLU(0.5)
        self.lin2 = nn.Linear(n, n)
        with torch.no_grad():
            for lin in (self.lin1, self.lin2):
                q, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
                lin.weight.copy_(q)
                lin.bias.copy_(torch.randn(n, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(self.flat(x))))


class Unflatten(nn.Module):
    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = shape

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y.view(y.shape[0], *self.shape)


class InverseAffine(nn.Module):
    """Exact inverse of ``y = x W^T + b`` for an orthogonal ``W``: ``x = (y - b) W``."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.weight = lin.weight.detach().clone()
        self.bias = lin.bias.detach().clone()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.bias) @ self.weight


class InverseLeaky(nn.Module):
    def __init__(self, slope: float):
        super().__init__()
        self.slope = slope

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.where(y >= 0, y, y / self.slope)


class InvertibleAdapter(ModelAdapter):
    """Adapter of :class:`InvertibleNet`, layers ``flat``, ``lin1``, ``act``, ``lin2`` (normalised inputs)."""

    type_name = "invertible"

    def __init__(self, channels: int = 1, size: int = 4, seed: int = 0):
        self.input_shape = (channels, size, size)
        self.model = InvertibleNet(self.input_shape, seed).eval()
        self.mean = (0.5,)
        self.std = (0.25,)

    def capture_points(self) -> dict[str, CapturePoint]:
        return {n: CapturePoint(n) for n in ("flat", "lin1", "act", "lin2")}

    def exact_inverses(self, names: list[str]) -> list[nn.Module]:
        """Exact inverse modules for the chain input <- names[0] <- names[1] ..."""
        m = self.model
        inverse_of = {
            "flat": Unflatten(self.input_shape),
            "lin1": InverseAffine(m.lin1),
            "act": InverseLeaky(0.5),
            "lin2": InverseAffine(m.lin2),
        }
        order = ["flat", "lin1", "act", "lin2"]
        steps = []
        previous = -1
        for name in names:
            k = order.index(name)
            # inverse of everything between the previous requested layer and this one, last layer first
            parts = [inverse_of[order[j]] for j in range(k, previous, -1)]
            steps.append(nn.Sequential(*parts))
            previous = k
        return steps


class TinyDetr(nn.Module):
    """A DETR-shaped model: conv backbone + 1x1 projection, transformer encoder, decoder with object queries,
    class and box heads (real torch layers, random weights)."""

    def __init__(self, width: int = 32, queries: int = 5, classes: int = 4):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.input_proj = nn.Conv2d(16, width, 1)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(width, 2, 64, dropout=0.0, batch_first=True),
            2,
            enable_nested_tensor=False,
        )
        self.query = nn.Parameter(torch.randn(1, queries, width))
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(width, 2, 64, dropout=0.0, batch_first=True), 2)
        self.head = nn.Linear(width, classes + 1 + 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.input_proj(self.backbone(x))
        tokens = f.flatten(2).transpose(1, 2)
        memory = self.encoder(tokens)
        out = self.decoder(self.query.expand(x.shape[0], -1, -1), memory)
        return self.head(out)


class TinyDetrAdapter(ModelAdapter):
    """DETR-like layers: backbone (map), encoder.i (tokens), decoder.i (object queries), head (per query)."""

    type_name = "tinydetr"

    def __init__(self, size: int = 16):
        self.input_shape = (3, size, size)
        self.model = TinyDetr().eval()
        self.mean = (0.485, 0.456, 0.406)
        self.std = (0.229, 0.224, 0.225)

    def capture_points(self) -> dict[str, CapturePoint]:
        return {
            "backbone": CapturePoint("input_proj"),
            "encoder.0": CapturePoint("encoder.layers.0"),
            "encoder.1": CapturePoint("encoder.layers.1"),
            "decoder.0": CapturePoint("decoder.layers.0"),
            "decoder.1": CapturePoint("decoder.layers.1"),
            "head": CapturePoint("head"),
        }

    def layer_kinds(self) -> dict[str, str]:
        return {"head": "logits"}

    def layer_meta(self, name: str, shape: tuple[int, ...]) -> dict[str, Any]:
        return {"object_queries": shape[0]} if name.startswith(("decoder", "head")) else {}

    def logits(self, output: Any) -> torch.Tensor:
        return output[..., :5]


class TestModels:
    """A plugin registering the test adapters as model types ``invertible`` and ``tinydetr``."""

    @hookimpl
    def probekit_register_models(self, register: Any) -> None:
        register("invertible", InvertibleAdapter, description="test: exactly invertible net")
        register("tinydetr", TinyDetrAdapter, description="test: DETR-shaped net")


class Suggestions:
    """A plugin suggesting inversion defaults for test adapters (the probekit_probe_defaults hook)."""

    @hookimpl
    def probekit_probe_defaults(self, probe: str, model: Any) -> dict[str, Any] | None:
        if probe == "inversion" and isinstance(model, TinyDetrAdapter):
            return {"architecture": {"depth": 2, "hidden": 48}}
        return None
