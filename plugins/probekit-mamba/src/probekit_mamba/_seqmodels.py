"""Sequence models and the token layout of the length-generalisation probe.

An image becomes one sequence (`d = d_model`):

    [length token]  c_1 ... c_L  <delim>  q_1 ... q_Q
     (adaptive only)   context            queries

* context token `c_i` = `[conv(patch_i) (d - 2 values), x_i, y_i]`: the p x p patch
  at a random position goes through one `Conv2d(C, d - 2, kernel_size=p)` (a learned
  linear patch embedding), and `(x_i, y_i)` is the patch centre (column, row) mapped to
  (-1, 1) as `2 * centre / side - 1`. The study used centre / 100 on 128-pixel images
  (0 to 1.28); centred coordinates train much faster at small scale (the input norms of
  both models are scale invariant, so an off-centre coordinate pair is a weak signal).
* `<delim>` is one learned vector.
* query token `q_j` = `[conv(0) (d - 2 values), x_j, y_j]`: an all-zero patch through the
  same embedding (so its values are the conv's bias) and the centre of the patch to predict.
  The model's output at each query token goes through a `Linear(d, C * p * p)` head: the
  predicted patch; the loss is the MSE against the true patch.
* `mamba-length-adaptive` prepends a length token `Linear(1, d)(L / 100)` (L = number of
  context patches), and optionally (`dt_scaling`) shifts every Mamba layer's step
  `dt = softplus(W x + b)` to `softplus(W x + b - gamma * log(L / 100))` with a learned
  per-channel `gamma` (initialised to 1), i.e. `dt ~ dt_0 * (100 / L) ** gamma` while dt is small.

Every model is causal, so the queries only see the context before them; the transformer
baseline gets positional information only from the coordinates in the tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

VARIANTS = ("mamba", "mamba-length-adaptive", "transformer")
LENGTH_SCALE = 100.0  # the length token is Linear(L / 100), as in the study


# -- patches and positions ------------------------------------------------------------------
def sample_positions(n: int, k: int, side: int, patch: int, generator: torch.Generator) -> torch.Tensor:
    """`(n, k, 2)` random top-left corners `(row, col)` of `patch` x `patch` patches
    (drawn with replacement)."""
    return torch.randint(0, side - patch + 1, (n, k, 2), generator=generator)


def grid_positions(side: int, patch: int) -> torch.Tensor:
    """`(K, 2)` top-left corners of patches tiling a `side` x `side` image (the last row/column
    is moved inwards when `side` is not a multiple of `patch`, so tiles then overlap a little)."""
    starts = list(range(0, side - patch + 1, patch))
    if starts[-1] != side - patch:
        starts.append(side - patch)
    s = torch.tensor(starts)
    return torch.stack(torch.meshgrid(s, s, indexing="ij"), -1).reshape(-1, 2)


def extract_patches(images: torch.Tensor, tops: torch.Tensor, patch: int) -> torch.Tensor:
    """Patches of `images` (N, C, H, W) at top-left corners `tops` (N, K, 2) -> (N, K, C, p, p)."""
    n, c, h, w = images.shape
    rows = tops[..., 0, None, None] + torch.arange(patch).view(1, 1, patch, 1)  # (N, K, p, 1)
    cols = tops[..., 1, None, None] + torch.arange(patch).view(1, 1, 1, patch)  # (N, K, 1, p)
    flat = (rows * w + cols).reshape(n, 1, -1)  # (N, 1, K*p*p)
    out = images.reshape(n, c, h * w).gather(2, flat.expand(n, c, flat.shape[-1]).to(images.device))
    return out.view(n, c, tops.shape[1], patch, patch).permute(0, 2, 1, 3, 4)


def centres(tops: torch.Tensor, patch: int, side: int) -> torch.Tensor:
    """Patch centres `(x, y)` = (column, row) mapped to (-1, 1): `2 * centre / side - 1`."""
    c = tops.float() + patch / 2.0
    return torch.stack([c[..., 1], c[..., 0]], -1) * (2.0 / side) - 1.0


def paste_patches(patches: torch.Tensor, tops: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average patches (K, C, p, p) at `tops` (K, 2) into an image; returns (image, coverage count)."""
    k, c, p, _ = patches.shape
    img = torch.zeros(c, side, side)
    count = torch.zeros(1, side, side)
    for i in range(k):
        r, col = int(tops[i, 0]), int(tops[i, 1])
        img[:, r:r + p, col:col + p] += patches[i].float()
        count[:, r:r + p, col:col + p] += 1
    return img / count.clamp_min(1), count


# -- the models -----------------------------------------------------------------------------
class SequenceModel(nn.Module):
    """Tokeniser + causal backbone + patch head, shared by all variants (see the module docstring)."""

    length_token: bool = False

    def __init__(self, channels: int, patch: int, d_model: int):
        super().__init__()
        if d_model < 4:
            raise ValueError(f"d_model must be at least 4 (2 coordinates + patch values), got {d_model}")
        self.channels, self.patch, self.d_model = channels, patch, d_model
        self.embed = nn.Conv2d(channels, d_model - 2, kernel_size=patch)
        self.delimiter = nn.Parameter(torch.randn(d_model) * 0.5)
        self.head = nn.Linear(d_model, channels * patch * patch)
        if self.length_token:
            self.length_embed = nn.Linear(1, d_model)

    def tokens(self, patches: torch.Tensor, ctx_xy: torch.Tensor, query_xy: torch.Tensor) -> torch.Tensor:
        """The input sequence (N, T, d) for context patches (N, L, C, p, p), their centres (N, L, 2)
        and query centres (N, Q, 2)."""
        n, length = patches.shape[:2]
        q = query_xy.shape[1]
        values = self.embed(patches.reshape(n * length, self.channels, self.patch, self.patch))
        ctx = torch.cat([values.view(n, length, -1), ctx_xy.to(values.dtype)], -1)
        delim = self.delimiter.expand(n, 1, self.d_model)
        # a query is a zero patch through the same embedding: its values are the conv's bias. A constant
        # there matters: with all-zero values the models' input norms (RMSNorm / LayerNorm are scale
        # invariant) would keep only the direction of (x, y) and lose where along it the query lies.
        empty = self.embed(values.new_zeros(1, self.channels, self.patch, self.patch)).view(1, 1, -1)
        queries = torch.cat([empty.expand(n, q, -1), query_xy.to(values.dtype)], -1)
        parts = [ctx, delim, queries]
        if self.length_token:
            lengths = torch.full((n, 1, 1), length / LENGTH_SCALE, dtype=values.dtype, device=values.device)
            parts.insert(0, self.length_embed(lengths))
        return torch.cat(parts, 1)

    def backbone(self, x: torch.Tensor, length: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, patches: torch.Tensor, ctx_xy: torch.Tensor, query_xy: torch.Tensor) -> torch.Tensor:
        """Predicted query patches (N, Q, C, p, p)."""
        x = self.tokens(patches, ctx_xy, query_xy)
        h = self.backbone(x, patches.shape[1])
        q = query_xy.shape[1]
        out = self.head(h[:, -q:])
        return out.view(*out.shape[:2], self.channels, self.patch, self.patch)


class _DtLengthShift(nn.Module):
    """Parametrisation of a Mamba layer's `dt_proj.bias`: `b - gamma * log(L / 100)`.

    The mixer adds this bias to its step before the softplus, so the shift scales `dt`
    by about `(100 / L) ** gamma` while `dt` is small (softplus(y) ~ exp(y) for y << 0).
    `log_length` is set by `MambaSequenceModel` before each forward (one L per batch).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.log_length = 0.0

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        return bias - self.gamma * self.log_length


def build_mamba_backbone(d_model: int, n_layers: int, state_size: int, expand: int, *, use_conv: bool,
                         backend: str = "auto") -> nn.Module:
    """A `transformers` `MambaModel` built by the plugin's `probekit_mamba.build_mamba`
    (its fast chunked CPU scan; `use_conv=False` bypasses conv1d). Its token `embeddings`
    are unused: the sequence is given as `inputs_embeds`."""
    from probekit_mamba._backends import build_mamba

    config = {"hidden_size": d_model, "num_hidden_layers": n_layers, "state_size": state_size,
              "expand": expand, "vocab_size": 1}
    return build_mamba(config, backend=backend, use_conv=use_conv)


class MambaSequenceModel(SequenceModel):
    """`mamba` / `mamba-length-adaptive`: a real `transformers` `MambaModel` backbone."""

    def __init__(self, channels: int, patch: int, d_model: int, n_layers: int, *, state_size: int = 8,
                 expand: int = 2, use_conv: bool = False, length_adaptive: bool = False,
                 dt_scaling: bool = False, backend: str = "auto"):
        self.length_token = length_adaptive
        super().__init__(channels, patch, d_model)
        if dt_scaling and not length_adaptive:
            raise ValueError("dt_scaling is part of the mamba-length-adaptive variant")
        self.mamba = build_mamba_backbone(d_model, n_layers, state_size, expand, use_conv=use_conv,
                                          backend=backend)
        self.mamba.embeddings.requires_grad_(False)  # never used: inputs_embeds are given
        if not use_conv:
            for layer in self.mamba.layers:  # bypassed, kept only for the library's checkpoint layout
                layer.mixer.conv1d.requires_grad_(False)
        self.dt_shifts: list[_DtLengthShift] = []
        if dt_scaling:
            for layer in self.mamba.layers:
                dt_proj = layer.mixer.dt_proj
                shift = _DtLengthShift(dt_proj.bias.shape[0])
                parametrize.register_parametrization(dt_proj, "bias", shift)
                self.dt_shifts.append(shift)

    def backbone(self, x: torch.Tensor, length: int) -> torch.Tensor:
        for shift in self.dt_shifts:
            shift.log_length = math.log(max(length, 1) / LENGTH_SCALE)
        return self.mamba(inputs_embeds=x, use_cache=False).last_hidden_state


class TransformerSequenceModel(SequenceModel):
    """`transformer`: pre-norm causal `nn.TransformerEncoder`, no positional encoding
    beyond the coordinates in the tokens; feed-forward width `2 * d_model` so that its size
    is close to the Mamba model's."""

    def __init__(self, channels: int, patch: int, d_model: int, n_layers: int, *, heads: int = 2):
        super().__init__(channels, patch, d_model)
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by transformer_heads ({heads})")
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model),
                                             enable_nested_tensor=False)

    def backbone(self, x: torch.Tensor, length: int) -> torch.Tensor:
        t = x.shape[1]
        mask = torch.triu(torch.full((t, t), float("-inf"), device=x.device), diagonal=1)
        return self.encoder(x, mask=mask, is_causal=True)


def build_sequence_model(variant: str, *, channels: int, patch: int, d_model: int, n_layers: int,
                         state_size: int = 8, expand: int = 2, use_conv: bool = False,
                         dt_scaling: bool = False, heads: int = 2, backend: str = "auto") -> SequenceModel:
    """One of `VARIANTS`."""
    if variant == "transformer":
        return TransformerSequenceModel(channels, patch, d_model, n_layers, heads=heads)
    if variant in ("mamba", "mamba-length-adaptive"):
        adaptive = variant == "mamba-length-adaptive"
        return MambaSequenceModel(channels, patch, d_model, n_layers, state_size=state_size, expand=expand,
                                  use_conv=use_conv, length_adaptive=adaptive,
                                  dt_scaling=dt_scaling and adaptive, backend=backend)
    raise ValueError(f"unknown variant '{variant}'; choose from {', '.join(VARIANTS)}")


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def patch_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all predicted pixels."""
    return F.mse_loss(pred, target)
