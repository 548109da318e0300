"""Inverse modules, chosen from the kinds and shapes of an adjacent pair of layers.

Each inverse module maps the state of layer k (`source`) to the state of layer
k-1 (`target`), both per-example shapes without the batch dimension:

========================================  ==========================================================
pair                                      inverse module
========================================  ==========================================================
tokens (N, D) -> tokens (N, D')           `TokenBlocks`: transformer layers of the width D
token set (N, D) -> token set (M, D')     `QueryDecoder`: M learned queries cross-attending to
                                          the N source tokens (the DETR decoder inverse)
tokens (N, D) -> map (C, h, w), N = h*w   `TokensToMap`: transformer layers, then tokens laid
                                          out on the h x w grid (the DETR encoder -> backbone inverse)
map or patch tokens -> image / map        `ConvUpsampler`: x2 transposed convolutions (the
                                          ViT embedding / DETR backbone inverse); patch tokens drop
                                          their prefix (class) tokens and are laid out on the grid
head outputs / vectors -> anything        `MLPInverse`: an MLP, per token when the head
                                          outputs are per token (DETR queries), else on the flat state
========================================  ==========================================================

Every module standardises its input and de-standardises its output per channel
with statistics of the training states (buffers saved with the module), which
keeps the optimisation well conditioned whatever the scale of a layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: kinds treated as sequences of tokens (Mamba's ``state`` is a sequence of hidden states)
TOKEN_KINDS = ("tokens", "state")
#: kinds of head outputs
HEAD_KINDS = ("logits", "vector", "other")


@dataclass
class Arch:
    """Resolved architecture settings (every field set)."""

    depth: int = 1
    heads: int | None = None
    mlp_ratio: float = 4.0
    hidden: int = 512
    conv_hidden: int = 64
    conv_channels: list[int] | None = None
    position_embedding: bool = True

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> Arch:
        """From `architecture` options where `None` means default."""
        arch = cls()
        for key, value in (options or {}).items():
            if value is None:
                continue
            if key == "hidden":
                arch.hidden = int(value)
                arch.conv_hidden = int(value)
            elif hasattr(arch, key):
                setattr(arch, key, value)
            else:
                raise ValueError(f"unknown architecture option '{key}'")
        return arch


@dataclass
class Site:
    """One side of a pair: a layer's name, kind, per-example shape and metadata."""

    name: str
    kind: str
    shape: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, layer: Any) -> Site:
        return cls(layer.name, layer.kind, tuple(layer.shape), dict(getattr(layer, "meta", {}) or {}))

    @property
    def is_tokens(self) -> bool:
        return len(self.shape) == 2 and self.kind in (*TOKEN_KINDS, "other")

    @property
    def is_spatial(self) -> bool:
        return len(self.shape) == 3 and self.kind in ("map", "image", "other")

    @property
    def is_queries(self) -> bool:
        """Whether this layer is a set of object queries (DETR decoder / head), from its metadata."""
        if self.meta.get("queries") is True:
            return True
        q = self.meta.get("object_queries") or self.meta.get("num_queries")
        if not q or len(self.shape) != 2 or self.shape[0] != q:
            return False
        if self.meta.get("encoder_tokens") == q:  # as many encoder tokens as queries: tell by the name
            return self.name.split(".")[0] in ("decoder", "head")
        return True


def _heads(width: int, wanted: int | None) -> int:
    """A head count that divides `width` (close to `wanted`, default `width / 32`)."""
    target = wanted or max(1, width // 32)
    for h in sorted(range(1, width + 1), key=lambda h: (abs(h - target), -h)):
        if width % h == 0:
            return h
    return 1


def _transformer(width: int, arch: Arch, layers: int | None = None) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        width,
        _heads(width, arch.heads),
        int(width * arch.mlp_ratio),
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, layers or arch.depth, enable_nested_tensor=False)


class Standardise(nn.Module):
    """`(x - mean) / std` with per-channel statistics kept as buffers (broadcast shapes)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(*shape))
        self.register_buffer("std", torch.ones(*shape))

    def set(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean.reshape(self.mean.shape))
        self.std.copy_(std.reshape(self.std.shape).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.std + self.mean


def stat_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Broadcast shape of per-channel statistics: last dim of tokens/vectors, first dim of maps."""
    if len(shape) == 3:
        return (1, shape[0], 1, 1)
    return (1,) * len(shape) + (shape[-1],) if shape else (1,)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of a batch of states (channels as in `stat_shape`)."""
    dims = [0, 2, 3] if x.dim() == 4 else list(range(x.dim() - 1))
    return x.mean(dims), x.std(dims)


class OneHotHead(nn.Module):
    """A detection head's output per query -> the argmax class as a one-hot vector, then the box numbers.

    The study's inverse predictor sees what DETR predicts, not its raw logits: `num_logits` class
    logits (the last: no object) become one-hot, the following `box_dims` numbers pass unchanged.
    """

    def __init__(self, num_logits: int, box_dims: int):
        super().__init__()
        self.num_logits, self.box_dims = num_logits, box_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = x[..., : self.num_logits]
        onehot = nn.functional.one_hot(logits.argmax(-1), self.num_logits).to(x.dtype)
        return torch.cat([onehot, x[..., self.num_logits : self.num_logits + self.box_dims]], -1)


class InverseModule(nn.Module):
    """An inverse module: standardise the source, run `core`, de-standardise to the target's scale.

    `encode` (optional) maps the raw source before the standardisation (the one-hot head input).
    """

    def __init__(self, core: nn.Module, source: Site, target: Site, description: str,
                 encode: nn.Module | None = None):
        super().__init__()
        self.encode = encode
        self.core = core
        self.source_norm = Standardise(stat_shape(source.shape))
        self.target_norm = Standardise(stat_shape(target.shape))
        self.source_shape = tuple(source.shape)
        self.target_shape = tuple(target.shape)
        self.description = description

    def fit_statistics(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """Set the standardisation from a sample of training states (called once, before training)."""
        source = source.float() if self.encode is None else self.encode(source.float())
        self.source_norm.set(*channel_stats(source))
        self.target_norm.set(*channel_stats(target.float()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encode is not None:
            x = self.encode(x)
        return self.target_norm.inverse(self.core(self.source_norm(x)))


class TokenBlocks(nn.Module):
    """Tokens -> tokens of the same length: transformer layers of the source width (then projected)."""

    def __init__(self, n: int, width: int, out_width: int, arch: Arch):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, n, width)) if arch.position_embedding else None
        self.blocks = _transformer(width, arch)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos is not None:
            x = x + self.pos
        return self.out(self.norm(self.blocks(x)))


class QueryDecoder(nn.Module):
    """Token set (N, D) -> token set (M, D'): M learned queries cross-attend to the source tokens."""

    def __init__(self, n: int, width: int, m: int, out_width: int, arch: Arch):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, n, width)) if arch.position_embedding else None
        self.queries = nn.Parameter(torch.randn(1, m, width) * 0.02)
        layer = nn.TransformerDecoderLayer(
            width,
            _heads(width, arch.heads),
            int(width * arch.mlp_ratio),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, arch.depth)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos is not None:
            x = x + self.pos
        q = self.queries.expand(x.shape[0], -1, -1)
        return self.out(self.norm(self.decoder(q, x)))


class TokensToMap(nn.Module):
    """Tokens (h*w, D) -> map (C, h, w): transformer layers, then the tokens laid out on the grid."""

    def __init__(self, n: int, width: int, channels: int, grid: tuple[int, int], arch: Arch):
        super().__init__()
        self.tokens = TokenBlocks(n, width, channels, arch)
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tokens(x)  # (B, h*w, C)
        return y.transpose(1, 2).reshape(y.shape[0], y.shape[2], *self.grid)


class PatchGrid(nn.Module):
    """Patch tokens (P + h*w, D) -> map (D, h, w), dropping the P prefix (class/register) tokens."""

    def __init__(self, prefix: int, grid: tuple[int, int]):
        super().__init__()
        self.prefix = prefix
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, self.prefix :]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.grid)


class ConvUpsampler(nn.Module):
    """Map (C, h, w) -> map or image (C', H, W): x2 transposed convolutions (k=2, s=2), GELU between them.

    The number of stages is `round(log2(H / h))`; a size that is not reached by
    doubling exactly is matched by a final bilinear resize and a 3x3 convolution.
    """

    def __init__(
        self,
        in_channels: int,
        in_hw: tuple[int, int],
        out_channels: int,
        out_hw: tuple[int, int],
        channels: list[int] | None = None,
        hidden: int = 64,
    ):
        super().__init__()
        scale = max(out_hw[0] / in_hw[0], out_hw[1] / in_hw[1])
        stages = max(0, round(math.log2(scale))) if scale >= 1 else 0
        if channels is None:
            channels = [max(16, in_channels // 2 ** (i + 1)) for i in range(stages)]
        elif len(channels) != stages:
            raise ValueError(
                f"architecture.conv_channels has {len(channels)} entries, but going from "
                f"{in_hw[0]}x{in_hw[1]} to {out_hw[0]}x{out_hw[1]} takes {stages} x2 stages"
            )
        layers: list[nn.Module] = []
        c = in_channels
        if stages == 0:  # same size (or smaller): a small conv net
            layers += [nn.Conv2d(c, hidden, 3, padding=1), nn.GELU()]
            c = hidden
        for nc in channels:
            layers.append(nn.ConvTranspose2d(c, nc, 2, stride=2))
            layers.append(nn.GELU())
            c = nc
        self.body = nn.Sequential(*layers)
        self.out_hw = tuple(out_hw)
        self.head = nn.Conv2d(c, out_channels, 3, padding=1)
        self.stages = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if tuple(y.shape[-2:]) != self.out_hw:
            y = nn.functional.interpolate(y, size=self.out_hw, mode="bilinear", align_corners=False)
        return self.head(y)


class MLPInverse(nn.Module):
    """An MLP: per token when source and target have the same number of tokens, else on the flat state."""

    def __init__(self, source: tuple[int, ...], target: tuple[int, ...], hidden: int):
        super().__init__()
        self.per_token = len(source) == 2 and len(target) == 2 and source[0] == target[0]
        self.target = target
        n_in = source[-1] if self.per_token else math.prod(source)
        n_out = target[-1] if self.per_token else math.prod(target)
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, n_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_token:
            return self.net(x)
        return self.net(x.flatten(1)).view(x.shape[0], *self.target)


def patch_layout(site: Site, image_hw: tuple[int, int] | None) -> tuple[int, tuple[int, int]] | None:
    """(prefix tokens, patch grid) of patch tokens, from layer metadata or by fitting the image's aspect."""
    n = site.shape[0]
    meta = site.meta
    grid = meta.get("grid") or meta.get("patch_grid") or meta.get("grid_size")
    prefix = meta.get("prefix_tokens", meta.get("num_prefix_tokens"))
    if grid is not None:
        gh, gw = (int(grid), int(grid)) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
        return (n - gh * gw if prefix is None else int(prefix)), (gh, gw)
    aspect = image_hw[1] / image_hw[0] if image_hw else 1.0
    for p in [int(prefix)] if prefix is not None else range(0, 9):
        cells = n - p
        gh = round(math.sqrt(cells / aspect))
        if gh > 0 and cells % gh == 0 and abs(cells // gh / gh - aspect) < 1e-6:
            return p, (gh, cells // gh)
    return None


def spatial_grid(site: Site, n: int) -> tuple[int, int] | None:
    """The (h, w) of a map whose flattened positions number `n`, else `None`."""
    if len(site.shape) == 3 and site.shape[1] * site.shape[2] == n:
        return int(site.shape[1]), int(site.shape[2])
    return None


def detection_head(site: Site) -> tuple[int, int] | None:
    """(class logits, box numbers) per query of a detection head (DETR's `head`), from its metadata."""
    n, box = site.meta.get("num_logits"), site.meta.get("box_dims")
    if n and box and len(site.shape) == 2 and site.shape[1] == int(n) + int(box):
        return int(n), int(box)
    return None


def build_inverse(
    source: Site, target: Site, arch: Arch, image_hw: tuple[int, int] | None = None, head_input: str = "onehot"
) -> InverseModule:
    """The inverse module for the pair `source` (layer k) -> `target` (layer k-1).

    A detection head's outputs enter as the argmax class (one-hot) plus the boxes, as in the study,
    unless `head_input` is `logits`.
    """
    s, t = source.shape, target.shape
    head = detection_head(source)
    core: nn.Module
    if head is not None and head_input == "onehot":
        core = MLPInverse(s, t, arch.hidden)
        what = f"argmax class one-hot ({head[0]}) + {head[1]} box numbers, MLP per query"
        return InverseModule(core, source, target, what, encode=OneHotHead(*head))
    if source.is_tokens and len(t) == 2:
        n, d = s
        m, d2 = t
        if n == m and source.is_queries == target.is_queries:
            core, what = TokenBlocks(n, d, d2, arch), "transformer layers (tokens -> tokens)"
        else:
            core, what = (
                QueryDecoder(n, d, m, d2, arch),
                f"learned queries ({m}) cross-attending ({n} -> {m} tokens)",
            )
    elif source.is_tokens and len(t) == 3:
        n, d = s
        grid = spatial_grid(target, n)
        layout = patch_layout(source, (t[1], t[2]))
        if grid is not None:
            core, what = TokensToMap(n, d, t[0], grid, arch), "transformer layers, tokens laid out as a map"
        elif layout is not None:
            prefix, (gh, gw) = layout
            up = ConvUpsampler(d, (gh, gw), t[0], (t[1], t[2]), arch.conv_channels, arch.conv_hidden)
            core = nn.Sequential(PatchGrid(prefix, (gh, gw)), up)
            what = (
                f"patch grid {gh}x{gw} (prefix {prefix} dropped) + transposed-convolution upsampler "
                f"({up.stages} x2 stages)"
            )
        else:
            core, what = MLPInverse(s, t, arch.hidden), "MLP (flat tokens -> map)"
    elif len(s) == 3 and len(t) == 3:
        up = ConvUpsampler(
            s[0],
            (s[1], s[2]),
            t[0],
            (t[1], t[2]),
            arch.conv_channels if target.kind == "image" or len(t) == 3 else None,
            arch.conv_hidden,
        )
        what = f"transposed-convolution upsampler ({up.stages} x2 stages, {s[1]}x{s[2]} -> {t[1]}x{t[2]})"
        core = up
    elif len(s) == 3 and len(t) == 2 and spatial_grid(source, t[0]) is not None:
        # map -> tokens over the same positions (e.g. a conv stem before a transformer)
        core = nn.Sequential(nn.Flatten(2), _Transpose(), TokenBlocks(t[0], s[0], t[1], arch))
        what = "map positions as tokens + transformer layers"
    else:
        core = MLPInverse(s, t, arch.hidden)
        what = "MLP per token" if core.per_token else "MLP (flat)"
    return InverseModule(core, source, target, what)


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class InverseChain(nn.Module):
    """Inverse modules of consecutive pairs, `modules[i]` mapping `sites[i + 1]` to `sites[i]`.

    `sites[0]` is the model input; `reconstruct` chains the modules from
    layer `sites[k]` down to the input.
    """

    def __init__(self, modules: Sequence[nn.Module]):
        super().__init__()
        self.steps = nn.ModuleList(modules)

    def reconstruct(self, state: torch.Tensor, depth: int, *, stop: int = 0) -> torch.Tensor:
        """Map a state of layer `depth` (1-based index into the requested layers) down to layer `stop`."""
        x = state
        for i in range(depth - 1, stop - 1, -1):
            x = self.steps[i](x)
        return x

    def forward(self, state: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        return self.reconstruct(state, len(self.steps) if depth is None else depth)
