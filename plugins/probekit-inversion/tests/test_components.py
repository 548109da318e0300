"""`granularity: component`: the study's inverse modules for ViT and DETR (wiskott-lab/inverse-tvm).

The study trains, for a ViT, `inv_bb` (patch embedding -> image: transposed convolutions on the patch grid)
and `inv_enc` (the output of the whole encoder -> the embedding: as many transformer blocks as the
encoder, of its width and heads); for DETR, the inverse backbone (map -> image), the inverse encoder (a
transformer of the encoder's depth, tokens back on the backbone's grid), the inverse decoder (learned
queries, one per encoder token, cross-attending to the decoder's query states, of the decoder's depth)
and the inverse predictor (the argmax class one-hot plus the boxes -> the decoder states, an MLP per query).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from probekit_inversion.modules import OneHotHead
from probekit_inversion.probe import InversionProbe

from probekit import SpecError, create_model


def planned(adapter, **options) -> InversionProbe:
    probe = InversionProbe(granularity="component", **options)
    probe.plan(SimpleNamespace(model=adapter, require_model=lambda: adapter, log=lambda message: None))
    return probe


def steps(probe: InversionProbe) -> list[tuple[str, str, str, object]]:
    """(source, target, core type, module) of every modular inverse, input side first."""
    out = []
    for i in range(len(probe.sites) - 1):
        module = probe.build_step(i, "test", torch.device("cpu"), 0)
        core = module.core
        kind = type(core[-1] if isinstance(core, torch.nn.Sequential) else core).__name__
        out.append((probe.sites[i + 1].name, probe.sites[i].name, kind, module))
    return out


def test_vit_components_are_the_studys_modules():
    pytest.importorskip("probekit_vit")
    adapter = create_model("vit", name="vit_tiny_patch16_224", pretrained=False,
                           kwargs={"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 3, "num_heads": 4,
                                   "num_classes": 5})
    probe = planned(adapter)
    got = steps(probe)
    assert [(s, t, k) for s, t, k, _ in got] == [
        ("embed", "input", "ConvUpsampler"),  # inv_bb: patch grid -> image
        ("block.2", "embed", "TokenBlocks"),  # inv_enc: the whole encoder at once
    ]
    assert "patch grid 8x8 (prefix 1 dropped)" in got[0][3].description
    encoder_inverse = got[1][3].core.blocks
    assert len(encoder_inverse.layers) == 3  # as many blocks as the encoder
    layer = encoder_inverse.layers[0]
    assert layer.self_attn.num_heads == 4 and layer.self_attn.embed_dim == 64
    # the chain reconstructs an image from the encoder's output
    x = adapter.example_inputs(2)
    _, states = adapter.capture(x, ["block.2"])
    assert got[0][3](got[1][3](states["block.2"])).shape == x.shape


def test_detr_components_are_the_studys_modules():
    pytest.importorskip("probekit_detr")
    config = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 3, "encoder_attention_heads": 2,
              "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_queries": 5,
              "num_labels": 3, "use_timm_backbone": False, "use_pretrained_backbone": False,
              "backbone_config": {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 8, 16, 16],
                                  "depths": [1, 1, 1, 1], "layer_type": "basic", "out_features": ["stage4"]}}
    adapter = create_model("detr", pretrained=False, size=[64, 96], config=config)
    probe = planned(adapter)
    got = steps(probe)
    assert [(s, t, k) for s, t, k, _ in got] == [
        ("backbone", "input", "ConvUpsampler"),  # inverse backbone
        ("encoder.1", "backbone", "TokensToMap"),  # inverse encoder, tokens back on the 2x3 grid
        ("decoder.2", "encoder.1", "QueryDecoder"),  # inverse decoder: 6 learned queries, one per token
        ("head", "decoder.2", "MLPInverse"),  # inverse predictor
    ]
    assert len(got[1][3].core.tokens.blocks.layers) == 2  # the encoder's depth
    assert got[1][3].core.tokens.blocks.layers[0].self_attn.num_heads == 2
    decoder_inverse = got[2][3].core
    assert len(decoder_inverse.decoder.layers) == 3 and decoder_inverse.queries.shape[1] == 6
    head = got[3][3]
    assert isinstance(head.encode, OneHotHead) and head.core.per_token
    # the predictor sees the argmax class, not the logits: logits with the same argmax give the same states
    _, states = adapter.capture(adapter.example_inputs(2), ["head"])
    h = states["head"]
    scaled = torch.cat([h[..., :4] * 3.0 + 1.0, h[..., 4:]], -1)  # same argmax over the 3 + 1 classes
    torch.testing.assert_close(head(h), head(scaled))
    # the raw-logit variant is an option
    raw = steps(planned(adapter, head_input="logits"))[3][3]
    assert raw.encode is None and not torch.allclose(raw(h), raw(scaled))


def test_a_model_without_components_is_refused():
    adapter = create_model("module", factory="probekit.testing:small_cnn", kwargs={"in_channels": 1},
                           input_shape=(1, 8, 8))
    with pytest.raises(SpecError, match="declares no components") as err:
        planned(adapter)
    assert err.value.path == "probe.granularity"
