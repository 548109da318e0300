"""Sequence models and the token layout of the length-generalisation probe.

Mamba (`mamba`, `mamba-length-adaptive`) reads an image as one causal sequence (`d = d_model`):

    [length token]  c_1 ... c_L  <delim>  q_1 ... q_Q
     (adaptive only)   context            queries

* context token `c_i` = `[conv(patch_i) (d - 2 values), x_i, y_i]`: the p x p patch
  at a random position goes through one `Conv2d(C, d - 2, kernel_size=p)` (a learned
  linear patch embedding; the study's conv to d values followed by a linear map to d - 2 is
  the same family of maps), and `(x_i, y_i)` is the patch centre (column, row) mapped to
  (-1, 1) as `2 * centre / side - 1`. The study used the offset from the image centre in
  pixels / 100 (-0.64 to 0.64 on 128-pixel images): the same coordinates up to a scale.
* `<delim>` is one learned vector.
* query token `q_j` = `[query (d - 2 values), x_j, y_j]`: one learned vector (as in the
  study) and the centre of the patch to predict.
* the model's output at each query token goes through the study's patch head,
  `sigmoid(Linear(d, C * p * p))` (`output="linear"` drops the sigmoid): the predicted patch in
  [0, 1]; the loss is the MSE against the true patch.
* `mamba-length-adaptive` prepends a length token `Linear(1, d)(L / 100)` (L = number of
  context patches; the study's `FoveatedMamba7`), and optionally (`dt_scaling`) shifts every
  Mamba layer's step `dt = softplus(W x + b)` to `softplus(W x + b - gamma * log(L / 100))` with a
  learned per-channel `gamma` (initialised to 1), i.e. `dt ~ dt_0 * (100 / L) ** gamma` while dt
  is small.

The `transformer` baseline is the study's non-causal encoder-decoder
(`TransformerEncoderDecoder`): the context patches, each `Conv2d(C, d, p)(patch)` plus a
sin-cos embedding of its position, go through `n_layers // 2` pre-norm encoder blocks (self
attention over the whole context, no mask); the queries, a learned vector plus the sin-cos
embedding of their positions, go through `n_layers // 2` decoder blocks (self attention among
the queries, cross attention to the encoded context, MLP), then the same patch head. It knows
nothing about the order of the context, only where each patch lies.
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
OUTPUTS = ("sigmoid", "linear")


class SequenceModel(nn.Module):
    """The patch head shared by all variants: `sigmoid(Linear(d, C * p * p))` (the study's), or linear."""

    length_token: bool = False

    def __init__(self, channels: int, patch: int, d_model: int, output: str = "sigmoid"):
        super().__init__()
        if d_model < 4:
            raise ValueError(f"d_model must be at least 4 (2 coordinates + patch values), got {d_model}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.channels, self.patch, self.d_model, self.output = channels, patch, d_model, output
        self.head = nn.Linear(d_model, channels * patch * patch)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Patches (N, Q, C, p, p) from the output states (N, Q, d) at the queries."""
        out = self.head(h)
        if self.output == "sigmoid":
            out = torch.sigmoid(out)
        return out.view(*out.shape[:2], self.channels, self.patch, self.patch)

    def forward(self, patches: torch.Tensor, ctx_xy: torch.Tensor, query_xy: torch.Tensor) -> torch.Tensor:
        """Predicted query patches (N, Q, C, p, p) for context patches (N, L, C, p, p), their centres
        (N, L, 2) and the query centres (N, Q, 2)."""
        raise NotImplementedError  # pragma: no cover - abstract


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
    (its fast CPU scan; `use_conv=False` bypasses conv1d). Its token `embeddings`
    are unused: the sequence is given as `inputs_embeds`."""
    from probekit_mamba._backends import build_mamba

    config = {"hidden_size": d_model, "num_hidden_layers": n_layers, "state_size": state_size,
              "expand": expand, "vocab_size": 1}
    return build_mamba(config, backend=backend, use_conv=use_conv)


class MambaSequenceModel(SequenceModel):
    """`mamba` / `mamba-length-adaptive`: a real `transformers` `MambaModel` backbone over the token
    sequence of the module docstring."""

    def __init__(self, channels: int, patch: int, d_model: int, n_layers: int, *, state_size: int = 8,
                 expand: int = 2, use_conv: bool = False, length_adaptive: bool = False,
                 dt_scaling: bool = False, backend: str = "auto", output: str = "sigmoid"):
        self.length_token = length_adaptive
        super().__init__(channels, patch, d_model, output)
        if dt_scaling and not length_adaptive:
            raise ValueError("dt_scaling is part of the mamba-length-adaptive variant")
        self.embed = nn.Conv2d(channels, d_model - 2, kernel_size=patch)
        self.delimiter = nn.Parameter(torch.randn(d_model) * 0.02)  # the study's init
        self.query = nn.Parameter(torch.randn(d_model - 2) * 0.02)
        if length_adaptive:
            self.length_embed = nn.Linear(1, d_model)
        self.mamba = build_mamba_backbone(d_model, n_layers, state_size, expand, use_conv=use_conv,
                                          backend=backend)
        self.mamba.embeddings.requires_grad_(False)  # never used: inputs_embeds are given
        from probekit_mamba._backends import _mixers

        mixers = [mixer for mixer, _ in _mixers(self.mamba)]  # one per layer, in depth order
        if not use_conv:
            for mixer in mixers:  # bypassed, kept only for the library's checkpoint layout
                mixer.conv1d.requires_grad_(False)
        self.dt_shifts: list[_DtLengthShift] = []
        if dt_scaling:
            for mixer in mixers:
                dt_proj = mixer.dt_proj
                shift = _DtLengthShift(dt_proj.bias.shape[0])
                parametrize.register_parametrization(dt_proj, "bias", shift)
                self.dt_shifts.append(shift)

    def tokens(self, patches: torch.Tensor, ctx_xy: torch.Tensor, query_xy: torch.Tensor) -> torch.Tensor:
        """The input sequence (N, T, d) for context patches (N, L, C, p, p), their centres (N, L, 2)
        and query centres (N, Q, 2)."""
        n, length = patches.shape[:2]
        q = query_xy.shape[1]
        values = self.embed(patches.reshape(n * length, self.channels, self.patch, self.patch))
        ctx = torch.cat([values.view(n, length, -1), ctx_xy.to(values.dtype)], -1)
        delim = self.delimiter.expand(n, 1, self.d_model)
        queries = torch.cat([self.query.expand(n, q, -1), query_xy.to(values.dtype)], -1)
        parts = [ctx, delim, queries]
        if self.length_token:
            lengths = torch.full((n, 1, 1), length / LENGTH_SCALE, dtype=values.dtype, device=values.device)
            parts.insert(0, self.length_embed(lengths))
        return torch.cat(parts, 1)

    def backbone(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """The Mamba's last hidden states for the token sequence `x` of `length` context patches."""
        for shift in self.dt_shifts:
            shift.log_length = math.log(max(length, 1) / LENGTH_SCALE)
        return self.mamba(inputs_embeds=x, use_cache=False).last_hidden_state

    def forward(self, patches: torch.Tensor, ctx_xy: torch.Tensor, query_xy: torch.Tensor) -> torch.Tensor:
        h = self.backbone(self.tokens(patches, ctx_xy, query_xy), patches.shape[1])
        return self.decode(h[:, -query_xy.shape[1]:])


def sincos_positions(x: torch.Tensor, y: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """The study's 2-d sin-cos position embedding (`get_pos_emb`): `dim // 4` frequencies
    `1 / temperature ** (k / (dim / 4))` per pixel, `[sin(x w), cos(x w), sin(y w), cos(y w)]`, zero-padded
    to `dim` when `dim` is not a multiple of 4."""
    k = torch.arange(dim // 4, dtype=torch.float32, device=x.device)
    omega = 1.0 / temperature ** (k / (dim / 4))
    ox, oy = x.float()[..., None] * omega, y.float()[..., None] * omega
    out = torch.cat([ox.sin(), ox.cos(), oy.sin(), oy.cos()], -1)
    return F.pad(out, (0, dim - out.shape[-1]))


class _Block(nn.Module):
    """The study's pre-norm block: self attention, optional cross attention, MLP (`ff * d` wide, GELU),
    each branch scaled by a learned per-channel layer scale (initialised to `layer_scale`)."""

    def __init__(self, d: int, heads: int, ff: int, layer_scale: float, cross: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.scale1 = nn.Parameter(layer_scale * torch.ones(d))
        self.cross = cross
        if cross:
            self.norm2 = nn.LayerNorm(d)
            self.cross_attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.scale2 = nn.Parameter(layer_scale * torch.ones(d))
        self.norm3 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d, ff * d), nn.GELU(), nn.Linear(ff * d, d))
        self.scale3 = nn.Parameter(layer_scale * torch.ones(d))

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.scale1 * self.attn(h, h, h, need_weights=False)[0]
        if self.cross:
            h = self.norm2(x)
            x = x + self.scale2 * self.cross_attn(h, memory, memory, need_weights=False)[0]
        return x + self.scale3 * self.mlp(self.norm3(x))


class TransformerSequenceModel(SequenceModel):
    """`transformer`: the study's non-causal encoder-decoder with sin-cos positions (module docstring).

    Positions are the patch centres' offsets from the image centre in pixels (`xy * side / 2`), as in
    the study. `n_layers` counts encoder plus decoder blocks (at least one of each).
    """

    def __init__(self, channels: int, patch: int, d_model: int, n_layers: int, *, side: int = 32,
                 heads: int = 8, ff: int = 4, layer_scale: float = 1e-4, output: str = "sigmoid"):
        super().__init__(channels, patch, d_model, output)
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by transformer_heads ({heads})")
        self.side = side
        self.embed = nn.Conv2d(channels, d_model, kernel_size=patch)
        self.query = nn.Parameter(torch.randn(d_model) * 0.02)
        half = max(1, n_layers // 2)
        self.encoder = nn.ModuleList([_Block(d_model, heads, ff, layer_scale) for _ in range(half)])
        self.decoder = nn.ModuleList([_Block(d_model, heads, ff, layer_scale, cross=True)
                                      for _ in range(max(1, n_layers - half))])

    def _positions(self, xy: torch.Tensor) -> torch.Tensor:
        pixels = xy.float() * (self.side / 2)
        return sincos_positions(pixels[..., 0], pixels[..., 1], self.d_model)

    def forward(self, patches: torch.Tensor, ctx_xy: torch.Tensor, query_xy: torch.Tensor) -> torch.Tensor:
        n, length = patches.shape[:2]
        q = query_xy.shape[1]
        values = self.embed(patches.reshape(n * length, self.channels, self.patch, self.patch)).view(n, length, -1)
        memory = values + self._positions(ctx_xy).to(values.dtype)
        for block in self.encoder:
            memory = block(memory)
        x = self.query.expand(n, q, -1) + self._positions(query_xy).to(values.dtype)
        for block in self.decoder:
            x = block(x, memory)
        return self.decode(x)


def build_sequence_model(variant: str, *, channels: int, patch: int, d_model: int, n_layers: int,
                         state_size: int = 8, expand: int = 2, use_conv: bool = False,
                         dt_scaling: bool = False, heads: int = 8, layer_scale: float = 1e-4, side: int = 32,
                         output: str = "sigmoid", backend: str = "auto") -> SequenceModel:
    """One of `VARIANTS` (`side`: the image side in pixels, for the transformer's positions)."""
    if variant == "transformer":
        return TransformerSequenceModel(channels, patch, d_model, n_layers, side=side, heads=heads,
                                        layer_scale=layer_scale, output=output)
    if variant in ("mamba", "mamba-length-adaptive"):
        adaptive = variant == "mamba-length-adaptive"
        return MambaSequenceModel(channels, patch, d_model, n_layers, state_size=state_size, expand=expand,
                                  use_conv=use_conv, length_adaptive=adaptive,
                                  dt_scaling=dt_scaling and adaptive, backend=backend, output=output)
    raise ValueError(f"unknown variant '{variant}'; choose from {', '.join(VARIANTS)}")


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def patch_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all predicted pixels."""
    return F.mse_loss(pred, target)
