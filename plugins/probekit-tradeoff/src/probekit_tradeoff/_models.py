"""The study's model families: encoder -> one latent of size L -> (mirrored decoder, classifier head).

Every family takes the shape of its encoder input (pixels, or another model's layer when attached)
and the shape of the image to reconstruct, so the same code serves MNIST (1x28x28), 8x8 digits and
CIFAR-10 (3x32x32). Decoders end in ``tanh``: reconstructions are pixels in [-1, 1].

Sizes follow the study's code (wiskott-lab/classification-reconstruction-encoder): FC hidden widths
616 / 716-684-616, CNN-small 3 x (conv 16, BN, 2x2 max-pool), CNN-large 64-64-128-128-128 channels
with 7/7/5/5/3 kernels, and an MAE-style ViT decoder. Unlike the study's CNNs (whose latent is the
fixed 16x4x4 / 128x4x4 feature map), every family here ends in a linear layer to the latent size L,
so that L can be swept for all families alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

FC_HIDDEN: dict[str, tuple[int, ...]] = {"fc-small": (), "fc-medium": (616,), "fc-large": (716, 684, 616)}
#: hidden widths of each family's classifier head (the study: 12 for FC-medium, 64 for FC-large)
CLASSIFIER_HIDDEN: dict[str, tuple[int, ...]] = {
    "fc-small": (),
    "fc-medium": (12,),
    "fc-large": (64,),
    "cnn-small": (),
    "cnn-large": (256,),
    "vit-tiny": (),
}


def _activation(name: str) -> nn.Module:
    return {"none": nn.Identity(), "relu": nn.ReLU(), "tanh": nn.Tanh()}[name]


def _mlp(sizes: Sequence[int], *, last: nn.Module | None = None) -> nn.Sequential:
    """Linear layers with ReLU between them (and ``last`` after the final one)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if last is not None:
        layers.append(last)
    return nn.Sequential(*layers)


def _halve(size: tuple[int, int], times: int) -> list[tuple[int, int]]:
    """Spatial sizes after ``times`` 2x2 poolings with ceil mode, starting with ``size``."""
    sizes = [size]
    for _ in range(times):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class TradeoffModel(nn.Module):
    """An encoder, a decoder and a classifier sharing the encoder's output ``z`` (the latent).

    ``forward(x)`` returns ``z``; :func:`probekit_tradeoff._routing.routed_losses` runs the decoder
    and classifier on it with gradient routing.
    """

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, classifier: nn.Module, *, family: str, latent: int
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.classifier = classifier
        self.family = family
        self.latent = latent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


# -- fully connected -----------------------------------------------------------------------------
class Unflatten(nn.Module):
    """Reshape vectors to ``shape`` (per example)."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


def fc_encoder(family: str, in_shape: Sequence[int], latent: int, activation: str) -> nn.Module:
    d = math.prod(in_shape)
    return nn.Sequential(nn.Flatten(), *_mlp([d, *FC_HIDDEN[family], latent], last=_activation(activation)))


def fc_decoder(family: str, latent: int, image_shape: Sequence[int]) -> nn.Module:
    d = math.prod(image_shape)
    hidden = FC_HIDDEN[family][::-1]  # mirror of the encoder
    layers: list[nn.Module] = []
    width = latent
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers += [nn.Linear(width, d), nn.Tanh(), Unflatten(image_shape)]
    return nn.Sequential(*layers)


# -- convolutional --------------------------------------------------------------------------------
def _conv_block(cin: int, cout: int, k: int, *, pool: bool, dropout: float) -> list[nn.Module]:
    block: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2)]
    if dropout > 0:
        block.append(nn.Dropout2d(dropout))
    block.append(nn.BatchNorm2d(cout))
    if pool:  # ceil mode: any H, W works and the decoder can mirror the sizes exactly
        block.append(nn.MaxPool2d(2, ceil_mode=True))
    block.append(nn.ReLU())
    return block


CNN_LAYERS: dict[str, list[tuple[int, int, bool]]] = {  # (channels, kernel, pool) per conv
    "cnn-small": [(16, 3, True), (16, 3, True), (16, 3, True)],
    "cnn-large": [(64, 7, False), (64, 7, False), (128, 5, True), (128, 5, True), (128, 3, True)],
}
CNN_DROPOUT = {"cnn-small": 0.0, "cnn-large": 0.2}  # as in the study


def cnn_encoder(family: str, in_shape: Sequence[int], latent: int, activation: str) -> nn.Module:
    if len(in_shape) != 3:
        raise ValueError(
            f"{family} needs (C, H, W) inputs (images or feature maps); got shape "
            f"{tuple(in_shape)}. Use an fc-* family for token or vector layers."
        )
    c, h, w = in_shape
    layers: list[nn.Module] = []
    cin = c
    for cout, k, pool in CNN_LAYERS[family]:
        layers += _conv_block(cin, cout, k, pool=pool, dropout=CNN_DROPOUT[family])
        cin = cout
    pools = sum(p for _, _, p in CNN_LAYERS[family])
    fh, fw = _halve((h, w), pools)[-1]
    layers += [nn.Flatten(), nn.Linear(cin * fh * fw, latent), _activation(activation)]
    return nn.Sequential(*layers)


def _up(cin: int, cout: int, size_in: tuple[int, int], size_out: tuple[int, int]) -> nn.ConvTranspose2d:
    """A stride-2 transposed conv from ``size_in`` to exactly ``size_out`` (= 2 * size_in or one less)."""
    pad = tuple(o - 2 * i + 1 for i, o in zip(size_in, size_out))
    assert all(p in (0, 1) for p in pad), (size_in, size_out)
    return nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=pad)


def cnn_decoder(family: str, latent: int, image_shape: Sequence[int]) -> nn.Module:
    c, h, w = image_shape
    sizes = _halve((h, w), 3)  # s0 (image) .. s3 (smallest map)
    if family == "cnn-small":
        ch = [16, 16, 16]
        tail: list[nn.Module] = [_up(ch[2], c, sizes[1], sizes[0]), nn.Tanh()]
    else:
        ch = [128, 128, 64]
        tail = [
            _up(ch[2], 64, sizes[1], sizes[0]),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, c, 3, padding=1),
            nn.Tanh(),
        ]
    s3 = sizes[3]
    return nn.Sequential(
        nn.Linear(latent, ch[0] * s3[0] * s3[1]),
        nn.ReLU(),
        Unflatten((ch[0], *s3)),
        _up(ch[0], ch[1], sizes[3], sizes[2]),
        nn.ReLU(),
        _up(ch[1], ch[2], sizes[2], sizes[1]),
        nn.ReLU(),
        *tail,
    )


# -- ViT with an MAE-style decoder ---------------------------------------------------------------
def sincos_pos_embed(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (grid_h * grid_w, dim), as in MAE."""
    if dim % 4:
        raise ValueError("embedding width must be a multiple of 4")
    gh, gw = grid
    ys, xs = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def emb(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([emb(ys), emb(xs)], dim=1).float()


def _blocks(width: int, depth: int, heads: int, mlp_ratio: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        width,
        heads,
        int(width * mlp_ratio),
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class ViTEncoder(nn.Module):
    """Patch embedding + class token + fixed sin-cos positions + pre-norm transformer blocks.

    The latent is a linear map of the mean of the patch tokens (the study's classifier pools the
    same way), so that it is one vector of size L like the other families'.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent: int,
        activation: str,
        *,
        patch: int = 4,
        width: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
    ):
        super().__init__()
        c, h, w = image_shape
        self.patch = patch
        self.grid = (math.ceil(h / patch), math.ceil(w / patch))
        self.pad = (0, self.grid[1] * patch - w, 0, self.grid[0] * patch - h)
        self.embed = nn.Conv2d(c, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.cls_token, std=0.02)
        self.register_buffer("pos", sincos_pos_embed(width, self.grid).unsqueeze(0), persistent=False)
        self.blocks = _blocks(width, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Sequential(nn.Linear(width, latent), _activation(activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, self.pad)
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens[:, 1:].mean(1))


class MAEDecoder(nn.Module):
    """MAE-style decoder: the latent becomes one visible token; every patch is a mask token plus its
    position, and transformer blocks let the mask tokens read the latent; a linear layer predicts
    each patch's pixels."""

    def __init__(
        self,
        latent: int,
        image_shape: Sequence[int],
        *,
        patch: int = 4,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
    ):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = (c, h, w)
        self.patch = patch
        self.grid = (math.ceil(h / patch), math.ceil(w / patch))
        self.embed = nn.Linear(latent, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("pos", sincos_pos_embed(width, self.grid).unsqueeze(0), persistent=False)
        self.blocks = _blocks(width, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(width)
        self.pred = nn.Linear(width, patch * patch * c)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = len(z)
        masks = self.mask_token.expand(n, self.grid[0] * self.grid[1], -1) + self.pos
        tokens = torch.cat([self.embed(z).unsqueeze(1), masks], dim=1)
        patches = self.pred(self.norm(self.blocks(tokens))[:, 1:])  # (N, gh*gw, p*p*C)
        c, h, w = self.image_shape
        p, (gh, gw) = self.patch, self.grid
        img = patches.reshape(n, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, gh * p, gw * p)
        return torch.tanh(img[:, :, :h, :w])


# -- assembly -------------------------------------------------------------------------------------
def build_model(
    family: str,
    latent: int,
    *,
    in_shape: Sequence[int],
    image_shape: Sequence[int],
    num_classes: int,
    activation: str = "none",
) -> TradeoffModel:
    """A :class:`TradeoffModel` of ``family`` with latent size ``latent``.

    ``in_shape`` is the encoder's input shape per example (the image's, or an attached layer's);
    ``image_shape`` is the (C, H, W) the decoder reconstructs.
    """
    if family in FC_HIDDEN:
        encoder = fc_encoder(family, in_shape, latent, activation)
        decoder = fc_decoder(family, latent, image_shape)
    elif family in CNN_LAYERS:
        encoder = cnn_encoder(family, in_shape, latent, activation)
        decoder = cnn_decoder(family, latent, image_shape)
    elif family == "vit-tiny":
        if tuple(in_shape) != tuple(image_shape):
            raise ValueError("vit-tiny embeds pixels itself; it cannot take another model's layer")
        encoder = ViTEncoder(image_shape, latent, activation)
        decoder = MAEDecoder(latent, image_shape)
    else:
        raise ValueError(f"unknown family '{family}'")
    classifier = _mlp([latent, *CLASSIFIER_HIDDEN[family], num_classes])
    return TradeoffModel(encoder, decoder, classifier, family=family, latent=latent)
