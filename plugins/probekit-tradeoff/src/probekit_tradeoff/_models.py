"""The study's model families: encoder -> one latent of size L -> (mirrored decoder, classifier head).

Every family takes the shape of its encoder input (pixels, or another model's layer when attached)
and the shape of the image to reconstruct, so the same code serves MNIST (1x28x28), 8x8 digits and
CIFAR-10 (3x32x32). The FC and CNN decoders end in `tanh`: reconstructions are pixels in [-1, 1];
the ViT's ends in a linear layer, as in the study.

Sizes follow the study's code (wiskott-lab/classification-reconstruction-encoder): FC hidden widths
616 / 716-684-616, CNN-small 3 x (conv 16, BN, 2x2 max-pool), CNN-large 64-64-128-128-128 channels
with 7/7/5/5/3 kernels, and the study's tiny MAE-style ViT. Unlike the study's CNNs (whose latent is
the fixed 16x4x4 / 128x4x4 feature map), the FC and CNN families end in a linear layer to the latent
size L, so that L can be swept for all families alike. The ViT's latent is, as in the study, every
token of its encoder: (1 + patches) tokens of width L (17 x L numbers on 28 x 28 images).
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
}


def _activation(name: str) -> nn.Module:
    return {"none": nn.Identity(), "relu": nn.ReLU(), "tanh": nn.Tanh()}[name]


def _mlp(sizes: Sequence[int], *, last: nn.Module | None = None) -> nn.Sequential:
    """Linear layers with ReLU between them (and `last` after the final one)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if last is not None:
        layers.append(last)
    return nn.Sequential(*layers)


def _halve(size: tuple[int, int], times: int) -> list[tuple[int, int]]:
    """Spatial sizes after `times` 2x2 poolings with ceil mode, starting with `size`."""
    sizes = [size]
    for _ in range(times):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class TradeoffModel(nn.Module):
    """An encoder, a decoder and a classifier sharing the encoder's output `z` (the latent).

    `forward(x)` returns `z`; `probekit_tradeoff._routing.routed_losses` runs the decoder
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
    """Reshape vectors to `shape` (per example)."""

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
    """A stride-2 transposed conv from `size_in` to exactly `size_out` (= 2 * size_in or one less)."""
    pad = (size_out[0] - 2 * size_in[0] + 1, size_out[1] - 2 * size_in[1] + 1)
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


# -- ViT (the study's CRE-ViT: MAE-style, the latent is every token) -----------------------------
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
    """Pre-norm transformer blocks (LayerNorm, attention with qkv bias, GELU MLP), as timm's `Block`."""
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


#: the study's tiny ViT (`train_cre_vit.py`): a 4 x 4 patch grid (patch 7 on 28 x 28), 4 heads,
#: MLP ratio 4, one encoder and one decoder block, token width = the latent size L
VIT_GRID, VIT_HEADS, VIT_MLP_RATIO, VIT_DEPTH = 4, 4, 4.0, 1


def vit_patch(image_shape: Sequence[int]) -> int:
    """Patch size giving the study's 4 x 4 grid: 7 for 28 x 28, 2 for 8 x 8, 8 for 32 x 32."""
    return max(1, math.ceil(max(image_shape[1:]) / VIT_GRID))


def vit_tokens(image_shape: Sequence[int]) -> int:
    """Tokens of the ViT latent for an image shape: the class token and one per patch (17 for MNIST)."""
    p = vit_patch(image_shape)
    return 1 + math.ceil(image_shape[1] / p) * math.ceil(image_shape[2] / p)


def _xavier(module: nn.Module) -> None:
    """MAE's initialisation: Xavier-uniform linear layers (and patch embedding), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MultiheadAttention):
            nn.init.xavier_uniform_(m.in_proj_weight)
            nn.init.zeros_(m.in_proj_bias)


class ViTEncoder(nn.Module):
    """Patch embedding, sin-cos positions, class token, pre-norm blocks and a final LayerNorm.

    As the study's `EncoderViT`, the output, the latent, is every token: (N, 1 + patches, L), the
    class token first; the token width is the latent size L.
    """

    def __init__(self, image_shape: Sequence[int], latent: int):
        super().__init__()
        c, h, w = image_shape
        self.patch = p = vit_patch(image_shape)
        self.grid = (math.ceil(h / p), math.ceil(w / p))
        self.pad = (0, self.grid[1] * p - w, 0, self.grid[0] * p - h)
        self.embed = nn.Conv2d(c, latent, p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, latent))
        self.register_buffer("pos", sincos_pos_embed(latent, self.grid).unsqueeze(0), persistent=False)
        self.blocks = _blocks(latent, VIT_DEPTH, VIT_HEADS, VIT_MLP_RATIO)
        self.norm = nn.LayerNorm(latent)
        _xavier(self)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, self.pad)
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)  # class position: 0
        return self.norm(self.blocks(tokens))


class ViTDecoder(nn.Module):
    """The study's `DecoderViT` without masking: a linear embedding of every latent token, sin-cos
    positions, pre-norm blocks, LayerNorm and a linear prediction of each patch's pixels (no output
    activation, as in the study); the class token's prediction is dropped."""

    def __init__(self, latent: int, image_shape: Sequence[int]):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = (c, h, w)
        self.patch = p = vit_patch(image_shape)
        self.grid = (math.ceil(h / p), math.ceil(w / p))
        self.embed = nn.Linear(latent, latent)
        pos = torch.cat([torch.zeros(1, latent), sincos_pos_embed(latent, self.grid)])
        self.register_buffer("pos", pos.unsqueeze(0), persistent=False)
        self.blocks = _blocks(latent, VIT_DEPTH, VIT_HEADS, VIT_MLP_RATIO)
        self.norm = nn.LayerNorm(latent)
        self.pred = nn.Linear(latent, p * p * c)
        _xavier(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = len(z)
        patches = self.pred(self.norm(self.blocks(self.embed(z) + self.pos)))[:, 1:]  # (N, gh*gw, p*p*C)
        c, h, w = self.image_shape
        p, (gh, gw) = self.patch, self.grid
        img = patches.reshape(n, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, gh * p, gw * p)
        return img[:, :, :h, :w]


class ViTClassifier(nn.Module):
    """The study's `ClassifierViT`: mean of the patch tokens (class token left out), a BatchNorm without
    affine parameters, and a linear layer."""

    def __init__(self, latent: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(latent, affine=False, eps=1e-6)
        self.linear = nn.Linear(latent, num_classes)
        _xavier(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(z[:, 1:].mean(1)))


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
    """A `TradeoffModel` of `family` with latent size `latent`.

    `in_shape` is the encoder's input shape per example (the image's, or an attached layer's);
    `image_shape` is the (C, H, W) the decoder reconstructs.
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
        if latent % VIT_HEADS:
            raise ValueError(f"vit-tiny needs latent sizes (token widths) that are multiples of {VIT_HEADS}")
        encoder = ViTEncoder(image_shape, latent)
        decoder = ViTDecoder(latent, image_shape)
        return TradeoffModel(encoder, decoder, ViTClassifier(latent, num_classes), family=family, latent=latent)
    else:
        raise ValueError(f"unknown family '{family}'")
    classifier = _mlp([latent, *CLASSIFIER_HIDDEN[family], num_classes])
    return TradeoffModel(encoder, decoder, classifier, family=family, latent=latent)
