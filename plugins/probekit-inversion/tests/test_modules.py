"""Inverse modules chosen from layer kinds and shapes: the right kind of module, the right output shape."""

from __future__ import annotations

import pytest
import torch
from inversion_helpers import InvertibleAdapter, TinyDetrAdapter
from probekit_inversion.modules import (
    Arch,
    ConvUpsampler,
    InverseChain,
    MLPInverse,
    QueryDecoder,
    Site,
    TokenBlocks,
    TokensToMap,
    build_inverse,
    patch_layout,
)

ARCH = Arch(depth=1, hidden=32, conv_hidden=16)


def _check(source: Site, target: Site, core_type: type, batch: int = 3, image_hw=None) -> torch.nn.Module:
    module = build_inverse(source, target, ARCH, image_hw)
    core = module.core
    if isinstance(core, torch.nn.Sequential) and core_type is not torch.nn.Sequential:
        assert any(isinstance(m, core_type) for m in core), (module.description, core)
    else:
        assert isinstance(core, core_type), (module.description, type(core))
    out = module(torch.randn(batch, *source.shape))
    assert tuple(out.shape) == (batch, *target.shape)
    # the module must train: gradients reach every parameter
    out.square().mean().backward()
    assert all(p.grad is not None for p in module.parameters())
    return module


def test_vit_pairs():
    embed = Site("embed", "tokens", (65, 64), {"patch_grid": [8, 8], "num_prefix_tokens": 1})
    block = Site("block.3", "tokens", (65, 64))
    head = Site("head", "logits", (10,))
    image = Site("input", "image", (3, 32, 32))
    _check(block, embed, TokenBlocks)
    up = _check(embed, image, ConvUpsampler, image_hw=(32, 32))
    assert up.core[1].stages == 2  # 8x8 patch grid -> 32x32 in two x2 transposed convolutions
    _check(head, block, MLPInverse)


def test_vit_grid_inferred_without_meta():
    # 1 class token + 14 x 14 patches, as vit_base_patch16_224
    assert patch_layout(Site("embed", "tokens", (197, 768)), (224, 224)) == (1, (14, 14))
    assert patch_layout(Site("embed", "tokens", (196, 768)), (224, 224)) == (0, (14, 14))
    assert patch_layout(Site("x", "tokens", (2 + 4 * 8, 16)), (16, 32)) == (2, (4, 8))


def test_detr_pairs():
    backbone = Site("backbone", "map", (32, 3, 4))
    encoder = Site("encoder.1", "tokens", (12, 32))
    decoder = Site("decoder.0", "tokens", (5, 32), {"object_queries": 5})
    decoder1 = Site("decoder.1", "tokens", (5, 32), {"object_queries": 5})
    head = Site("head", "logits", (5, 9), {"object_queries": 5})
    image = Site("input", "image", (3, 24, 32))
    up = _check(backbone, image, ConvUpsampler)
    assert up.core.stages == 3
    _check(encoder, backbone, TokensToMap)
    _check(Site("encoder.2", "tokens", (12, 32)), encoder, TokenBlocks)
    q = _check(decoder, encoder, QueryDecoder)
    assert q.core.queries.shape == (1, 12, 32)  # one learned query per encoder token
    _check(decoder1, decoder, TokenBlocks)
    mlp = _check(head, decoder1, MLPInverse)
    assert mlp.core.per_token  # (class logits, box) of each query -> that query's state


def test_query_sets_of_equal_length_use_cross_attention():
    # 6 object queries decoding 6 encoder tokens: still a set-to-set inverse, not per-position blocks
    _check(
        Site("decoder.0", "tokens", (6, 32), {"object_queries": 6}),
        Site("encoder.1", "tokens", (6, 32)),
        QueryDecoder,
    )


def test_mamba_like_sequence_pairs():
    layer = Site("layer.3", "state", (20, 16))
    embed = Site("embed", "tokens", (20, 16))
    seq_input = Site("input", "tokens", (20, 3))
    _check(layer, embed, TokenBlocks)
    _check(embed, seq_input, TokenBlocks)  # width 16 -> 3 through the output projection


def test_cnn_map_pairs():
    _check(Site("6", "map", (16, 4, 4)), Site("5", "map", (16, 8, 8)), ConvUpsampler)
    _check(Site("2", "map", (8, 8, 8)), Site("input", "image", (1, 8, 8)), ConvUpsampler)
    _check(Site("pool", "map", (32, 7, 7)), Site("input", "image", (1, 28, 28)), ConvUpsampler)
    _check(Site("odd", "map", (16, 5, 5)), Site("input", "image", (3, 17, 17)), ConvUpsampler)  # resize path
    _check(Site("9", "vector", (64,)), Site("8", "map", (64, 4, 4)), MLPInverse)


def test_conv_channels_option_is_checked():
    arch = Arch(conv_channels=[32, 16, 8])
    m = build_inverse(Site("b", "map", (64, 4, 4)), Site("input", "image", (3, 32, 32)), arch)
    assert [c.out_channels for c in m.core.body if isinstance(c, torch.nn.ConvTranspose2d)] == [32, 16, 8]
    with pytest.raises(ValueError, match="3 x2 stages"):
        build_inverse(Site("b", "map", (64, 4, 4)), Site("input", "image", (3, 32, 32)), Arch(conv_channels=[8]))


def test_modules_from_real_adapter_layers():
    """Plan a whole chain from a DETR-shaped adapter's layer list and check it maps back to the input."""
    adapter = TinyDetrAdapter(size=16)
    layers = adapter.layers()
    sites = [Site("input", "image", adapter.input_shape)] + [Site.of(layer) for layer in layers]
    steps = [build_inverse(sites[i + 1], sites[i], ARCH) for i in range(len(sites) - 1)]
    kinds = [type(s.core).__name__ for s in steps]
    assert kinds == [
        "ConvUpsampler",
        "TokensToMap",
        "TokenBlocks",
        "QueryDecoder",
        "TokenBlocks",
        "MLPInverse",
    ]
    x = adapter.example_inputs(2)
    _, states = adapter.capture(x)
    chain = InverseChain(steps)
    for depth, layer in enumerate(layers, start=1):
        assert chain.reconstruct(states[layer.name], depth).shape == x.shape


def test_timm_vit_layers_plan():
    timm = pytest.importorskip("timm")
    from probekit import CapturePoint, ModelAdapter

    class TimmVit(ModelAdapter):
        type_name = "timm-vit-test"

        def __init__(self):
            self.model = timm.create_model(
                "vit_tiny_patch16_224",
                pretrained=False,
                img_size=32,
                patch_size=8,
                embed_dim=32,
                depth=2,
                num_heads=2,
                num_classes=5,
            ).eval()
            self.input_shape = (3, 32, 32)

        def capture_points(self):
            return {
                "embed": CapturePoint("patch_drop"),
                "block.0": CapturePoint("blocks.0"),
                "block.1": CapturePoint("blocks.1"),
                "norm": CapturePoint("norm"),
                "head": CapturePoint("head"),
            }

        def layer_kinds(self):
            return {"head": "logits"}

    adapter = TimmVit()
    layers = adapter.layers()
    sites = [Site("input", "image", (3, 32, 32))] + [Site.of(layer) for layer in layers]
    steps = [build_inverse(sites[i + 1], sites[i], ARCH, (32, 32)) for i in range(len(sites) - 1)]
    # no metadata: the 17 tokens are found to be 1 class token + a 4 x 4 patch grid
    assert "patch grid 4x4 (prefix 1 dropped)" in steps[0].description
    x = adapter.example_inputs(2)
    _, states = adapter.capture(x)
    chain = InverseChain(steps)
    assert chain.reconstruct(states["head"], len(steps)).shape == x.shape


def test_invertible_adapter_exact_inverses():
    adapter = InvertibleAdapter()
    x = adapter.preprocess(torch.rand(4, 1, 4, 4))
    _, states = adapter.capture(x, ["lin1", "lin2"])
    chain = InverseChain(adapter.exact_inverses(["lin1", "lin2"]))
    torch.testing.assert_close(chain.reconstruct(states["lin2"], 2), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(chain.reconstruct(states["lin1"], 1), x, atol=1e-5, rtol=0)
