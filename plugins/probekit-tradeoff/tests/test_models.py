"""The model families: shapes, output range, and the size of the shared latent."""

from __future__ import annotations

import pytest
import torch
from probekit_tradeoff._models import _halve, build_model, sincos_pos_embed, vit_patch, vit_tokens
from probekit_tradeoff.options import FAMILIES

SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32), (1, 13, 11)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_family_shapes_and_range(family: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    latent = 8 if family == "vit-tiny" else 5  # the ViT's token width: a multiple of its 4 heads
    model = build_model(family, latent, in_shape=shape, image_shape=shape, num_classes=7).eval()
    x = torch.rand(3, *shape) * 2 - 1
    with torch.no_grad():
        z = model.encoder(x)
        recon = model.decoder(z)
        logits = model.classifier(z)
    if family == "vit-tiny":  # the study's ViT latent: every token (class token + a 4 x 4 grid)
        assert z.shape == (3, vit_tokens(shape), 8)
    else:
        assert z.shape == (3, 5)
        assert recon.abs().max() <= 1.0  # tanh output: pixels in [-1, 1]
    assert recon.shape == (3, *shape)
    assert logits.shape == (3, 7)


def test_vit_is_the_studys() -> None:
    """The study's CRE-ViT on MNIST (train_cre_vit.py): patch 7, 16 patches + class token of width L,
    one block each side, 4 heads, MLP ratio 4; the classifier pools the patch tokens and ignores the
    class token; the decoder predicts each patch from its own token."""
    torch.manual_seed(0)
    m = build_model("vit-tiny", 8, in_shape=(1, 28, 28), image_shape=(1, 28, 28), num_classes=10).eval()
    assert vit_patch((1, 28, 28)) == 7 and vit_tokens((1, 28, 28)) == 17
    for part in (m.encoder, m.decoder):
        (block,) = part.blocks.layers
        assert block.self_attn.num_heads == 4 and block.linear1.out_features == 32
        assert block.self_attn.in_proj_bias is not None
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        z = m.encoder(x)
        assert z.shape == (5, 17, 8)
        # LayerNorm on every token, as the study's encoder ends
        torch.testing.assert_close(z.mean(-1), torch.zeros(5, 17), atol=1e-5, rtol=0)
        # the classifier reads the mean of the patch tokens only
        z2 = z.clone()
        z2[:, 0] += 3.0
        torch.testing.assert_close(m.classifier(z2), m.classifier(z))
        expected = m.classifier.linear(m.classifier.norm(z[:, 1:].mean(1)))
        torch.testing.assert_close(m.classifier(z), expected)
        # the decoder's patch (row 1, column 2) is pixels [7:14, 14:21], read from token 1 + 1 * 4 + 2
        recon = m.decoder(z)
        tokens = m.decoder.pred(m.decoder.norm(m.decoder.blocks(m.decoder.embed(z) + m.decoder.pos)))
        torch.testing.assert_close(recon[:, 0, 7:14, 14:21].reshape(5, 49), tokens[:, 7])
    with pytest.raises(ValueError, match="multiples of 4"):
        build_model("vit-tiny", 6, in_shape=(1, 28, 28), image_shape=(1, 28, 28), num_classes=10)


def test_study_sizes() -> None:
    """FC widths of the study's code: 784-616-L (medium) and 784-716-684-616-L (large), mirrored."""
    m = build_model("fc-large", 4, in_shape=(1, 28, 28), image_shape=(1, 28, 28), num_classes=10)
    enc = [layer.out_features for layer in m.encoder.modules() if isinstance(layer, torch.nn.Linear)]
    dec = [layer.out_features for layer in m.decoder.modules() if isinstance(layer, torch.nn.Linear)]
    assert enc == [716, 684, 616, 4]
    assert dec == [616, 684, 716, 784]
    m = build_model("fc-medium", 4, in_shape=(1, 28, 28), image_shape=(1, 28, 28), num_classes=10)
    cls = [layer.out_features for layer in m.classifier.modules() if isinstance(layer, torch.nn.Linear)]
    assert cls == [12, 10]


def test_latent_activation() -> None:
    torch.manual_seed(0)
    m = build_model(
        "fc-small", 6, in_shape=(1, 8, 8), image_shape=(1, 8, 8), num_classes=10, activation="relu"
    )
    z = m.encoder(torch.randn(16, 1, 8, 8))
    assert (z >= 0).all() and (z == 0).any()


def test_attached_shapes() -> None:
    """An encoder on another model's feature map (32 x 4 x 4) still reconstructs the 8x8 image."""
    for family in ("fc-medium", "cnn-small"):
        m = build_model(family, 3, in_shape=(32, 4, 4), image_shape=(1, 8, 8), num_classes=10)
        z = m.encoder(torch.randn(2, 32, 4, 4))
        assert m.decoder(z).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="fc-"):
        build_model("cnn-small", 3, in_shape=(17, 64), image_shape=(1, 8, 8), num_classes=10)


def test_helpers() -> None:
    assert _halve((28, 28), 3) == [(28, 28), (14, 14), (7, 7), (4, 4)]
    pe = sincos_pos_embed(8, (2, 3))
    assert pe.shape == (6, 8)
    assert torch.equal(pe[0], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))
