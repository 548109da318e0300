"""Token layout, patch extraction and the sequence models of the length-generalisation probe."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from probekit_mamba._seqmodels import (
    LENGTH_SCALE,
    MambaSequenceModel,
    build_sequence_model,
    centres,
    extract_patches,
    grid_positions,
    paste_patches,
    sample_positions,
)

SMALL = {"channels": 1, "patch": 2, "d_model": 8, "n_layers": 2, "state_size": 4}



pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models

def test_extract_patches_equals_slicing():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 2, 9, 9, generator=g)
    tops = sample_positions(3, 7, 9, 3, g)
    patches = extract_patches(images, tops, 3)
    assert patches.shape == (3, 7, 2, 3, 3)
    for n in range(3):
        for k in range(7):
            r, c = tops[n, k].tolist()
            assert torch.equal(patches[n, k], images[n, :, r:r + 3, c:c + 3])
    assert int(tops.min()) >= 0 and int(tops.max()) <= 6


@pytest.mark.parametrize("side,patch", [(8, 2), (9, 4), (32, 4)])
def test_grid_tiles_reassemble_the_image(side, patch):
    image = torch.rand(1, 1, side, side)
    grid = grid_positions(side, patch)
    assert len(grid) == math.ceil(side / patch) ** 2
    rebuilt, count = paste_patches(extract_patches(image, grid[None], patch)[0], grid, side)
    assert int(count.min()) >= 1
    torch.testing.assert_close(rebuilt, image[0])


def test_centres_are_x_column_y_row_in_minus_one_one():
    tops = torch.tensor([[[0, 0], [4, 28], [14, 14]]])  # (row, col)
    xy = centres(tops, 4, 32)
    expected = torch.tensor([[[2, 2], [30, 6], [16, 16]]]) / 16 - 1
    torch.testing.assert_close(xy, expected)
    assert float(xy[0, 2].abs().max()) == 0.0  # the image centre is (0, 0)


@pytest.mark.parametrize("variant", ["mamba", "mamba-length-adaptive"])
def test_token_layout(variant):
    torch.manual_seed(0)
    model = build_sequence_model(variant, **SMALL)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 1, 8, 8, generator=g)
    ctx, qry = sample_positions(2, 5, 8, 2, g), sample_positions(2, 3, 8, 2, g)
    patches, ctx_xy, q_xy = extract_patches(images, ctx, 2), centres(ctx, 2, 8), centres(qry, 2, 8)
    tokens = model.tokens(patches, ctx_xy, q_xy)
    offset = 1 if variant == "mamba-length-adaptive" else 0
    assert tokens.shape == (2, offset + 5 + 1 + 3, 8)
    # context: conv of the patch, then (x, y)
    expected = model.embed(patches[1, 2]).flatten()
    torch.testing.assert_close(tokens[1, offset + 2, :6], expected)
    torch.testing.assert_close(tokens[:, offset:offset + 5, 6:], ctx_xy)
    # delimiter, then queries: one learned vector (the study's query token) and (x, y)
    torch.testing.assert_close(tokens[:, offset + 5], model.delimiter.expand(2, 8))
    torch.testing.assert_close(tokens[:, offset + 6:, :6], model.query.expand(2, 3, 6))
    torch.testing.assert_close(tokens[:, offset + 6:, 6:], q_xy)
    if offset:
        length_token = model.length_embed(torch.tensor([[5 / LENGTH_SCALE]]))
        torch.testing.assert_close(tokens[:, 0], length_token.expand(2, 8))
    out = model(patches, ctx_xy, q_xy)
    assert out.shape == (2, 3, 1, 2, 2)


@pytest.mark.parametrize("variant", ["mamba", "mamba-length-adaptive", "transformer"])
def test_sigmoid_head_keeps_patches_in_the_pixel_range(variant):
    torch.manual_seed(0)
    model = build_sequence_model(variant, **SMALL)
    with torch.no_grad():
        model.head.bias.fill_(30.0)  # far into the sigmoid's saturation
        g = torch.Generator().manual_seed(1)
        ctx, qry = sample_positions(2, 5, 8, 2, g), sample_positions(2, 3, 8, 2, g)
        args = (extract_patches(torch.rand(2, 1, 8, 8, generator=g), ctx, 2), centres(ctx, 2, 8), centres(qry, 2, 8))
        out = model(*args)
        assert float(out.min()) > 0.99 and float(out.max()) <= 1.0
        linear = build_sequence_model(variant, output="linear", **SMALL)
        linear.load_state_dict(model.state_dict())
        assert float(linear(*args).min()) > 25  # the same weights without the sigmoid
    with pytest.raises(ValueError, match="output"):
        build_sequence_model(variant, output="tanh", **SMALL)


@pytest.mark.parametrize("variant", ["mamba", "mamba-length-adaptive"])
def test_mamba_models_are_causal(variant):
    """A query's prediction does not depend on the queries after it."""
    torch.manual_seed(0)
    model = build_sequence_model(variant, **SMALL).eval()
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 1, 8, 8, generator=g)
    ctx, qry = sample_positions(2, 6, 8, 2, g), sample_positions(2, 4, 8, 2, g)
    other = qry.clone()
    other[:, 2:] = sample_positions(2, 2, 8, 2, g)
    with torch.no_grad():
        a = model(extract_patches(images, ctx, 2), centres(ctx, 2, 8), centres(qry, 2, 8))
        b = model(extract_patches(images, ctx, 2), centres(ctx, 2, 8), centres(other, 2, 8))
        # ... but does depend on the context
        c = model(extract_patches(images.flip(-1), ctx, 2), centres(ctx, 2, 8), centres(qry, 2, 8))
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:])
    assert not torch.allclose(a, c)


def test_transformer_is_the_studys_non_causal_encoder_decoder():
    """The context's order does not matter (no causal mask, positions come from where the patches lie),
    every query sees the whole context, and the blocks are split into encoder and decoder."""
    torch.manual_seed(0)
    model = build_sequence_model("transformer", channels=1, patch=2, d_model=8, n_layers=4, heads=2,
                                 layer_scale=0.5, side=8).eval()
    assert len(model.encoder) == 2 and len(model.decoder) == 2
    assert all(not b.cross for b in model.encoder) and all(b.cross for b in model.decoder)
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 1, 8, 8, generator=g)
    ctx, qry = sample_positions(2, 6, 8, 2, g), sample_positions(2, 4, 8, 2, g)
    perm = torch.randperm(6, generator=g)
    with torch.no_grad():
        a = model(extract_patches(images, ctx, 2), centres(ctx, 2, 8), centres(qry, 2, 8))
        b = model(extract_patches(images, ctx[:, perm], 2), centres(ctx[:, perm], 2, 8), centres(qry, 2, 8))
        # the last context patch changes the first query's prediction (a causal model would have seen it too,
        # but here it also holds when the context is given in any order)
        changed = ctx.clone()
        changed[:, -1] = torch.tensor([0, 0])
        c = model(extract_patches(images, changed, 2), centres(changed, 2, 8), centres(qry, 2, 8))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[:, 0], c[:, 0])
    # layer scale: every residual branch starts at the given value
    assert float(model.encoder[0].scale1.detach()[0]) == 0.5 and float(model.decoder[1].scale2.detach()[0]) == 0.5


def test_sincos_positions_are_the_studys():
    from probekit_mamba._seqmodels import sincos_positions

    x, y = torch.tensor([3.0, -5.0]), torch.tensor([0.0, 7.0])
    emb = sincos_positions(x, y, 16)
    omega = 1.0 / 10000 ** (torch.arange(4) / 4)  # d // 4 frequencies per axis
    expected = torch.cat([torch.sin(x[:, None] * omega), torch.cos(x[:, None] * omega),
                          torch.sin(y[:, None] * omega), torch.cos(y[:, None] * omega)], -1)
    torch.testing.assert_close(emb, expected)
    assert sincos_positions(x, y, 10).shape == (2, 10)  # padded when d is not a multiple of 4
    # the transformer embeds pixel offsets from the image centre: centre (0, 0) -> sin 0, cos 1
    model = build_sequence_model("transformer", channels=1, patch=2, d_model=8, n_layers=2, heads=2, side=32)
    torch.testing.assert_close(model._positions(torch.tensor([[0.5, -0.25]])),
                               sincos_positions(torch.tensor([8.0]), torch.tensor([-4.0]), 8))


def test_mamba_backbone_is_the_transformers_model():
    from transformers import MambaModel

    model = build_sequence_model("mamba", **SMALL)
    assert isinstance(model.mamba, MambaModel)
    assert len(model.mamba.layers) == 2
    assert model.mamba.config.hidden_size == 8 and model.mamba.config.state_size == 4


def test_dt_scaling_shifts_the_step_bias_with_log_length():
    torch.manual_seed(0)
    model = MambaSequenceModel(length_adaptive=True, dt_scaling=True, **SMALL)
    mixer = model.mamba.layers[0].mixer
    raw = mixer.dt_proj.parametrizations.bias.original.detach().clone()
    seen = []
    handle = mixer.register_forward_pre_hook(lambda m, args: seen.append(m.dt_proj.bias.detach().clone()))
    x = torch.randn(1, 12, 8)
    with torch.no_grad():
        model.backbone(x, 50)
        model.backbone(x, 200)
    handle.remove()
    torch.testing.assert_close(seen[0], raw - math.log(50 / LENGTH_SCALE))  # gamma starts at 1
    torch.testing.assert_close(seen[1], raw - math.log(200 / LENGTH_SCALE))
    # the length changes the output only through dt (same tokens)
    with torch.no_grad():
        assert not torch.allclose(model.backbone(x, 50), model.backbone(x, 200))
    gammas = [n for n, p in model.named_parameters() if n.endswith("gamma")]
    assert len(gammas) == 2
    with pytest.raises(ValueError, match="length-adaptive"):
        MambaSequenceModel(length_adaptive=False, dt_scaling=True, **SMALL)


def test_sizes():
    from probekit_mamba._seqmodels import count_parameters

    sizes = {v: count_parameters(build_sequence_model(v, channels=1, patch=4, d_model=16, n_layers=8))
             for v in ("mamba", "mamba-length-adaptive", "transformer")}
    assert sizes["mamba-length-adaptive"] - sizes["mamba"] == 2 * 16  # Linear(1, d)
    # the study's encoder-decoder (4 + 4 blocks, MLP 4 d) is larger than its Mamba at the same width
    assert 1.0 < sizes["transformer"] / sizes["mamba"] < 2.0, sizes


def test_options_module_does_not_import_torch():
    code = ("import sys; import probekit_mamba._lengthgen_options as o; o.LengthGenOptions(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
