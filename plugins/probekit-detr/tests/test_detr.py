"""Tests of the ``detr`` adapter on a tiny real DETR (small ResNet backbone) saved and loaded back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from probekit import SpecError, create_model
from probekit.testing import heavy_modules_after_loading_plugins, listed_types


def tiny_config(**extra):
    from transformers import DetrConfig, ResNetConfig

    backbone = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 16, 24],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage4"],
    )
    return DetrConfig(
        use_timm_backbone=False,
        backbone_config=backbone,
        use_pretrained_backbone=False,
        d_model=32,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=6,
        num_labels=4,
        **extra,
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    from transformers import DetrForObjectDetection, DetrImageProcessor

    folder = tmp_path_factory.mktemp("tiny-detr")
    torch.manual_seed(0)
    model = DetrForObjectDetection(tiny_config()).eval()
    model.save_pretrained(folder)
    DetrImageProcessor(size={"shortest_edge": 96, "longest_edge": 160}).save_pretrained(folder)
    return folder, model


def images(n: int = 2, h: int = 96, w: int = 128) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(1))


NAMES = ["backbone", "encoder.0", "encoder.1", "decoder.0", "decoder.1", "decoder.2", "head"]


@pytest.mark.parametrize("size", [None, (64, 96)])
def test_capture_equals_model_and_output_hidden_states(saved, size) -> None:
    folder, original = saved
    adapter = create_model("detr", name=str(folder), size=list(size) if size else None)
    model = adapter.model
    for k, v in original.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert [layer.name for layer in adapter.layers()] == NAMES
    x = adapter.preprocess(images())
    assert x.shape[-2:] == ((96, 128) if size is None else size)
    with torch.no_grad():
        direct = model(pixel_values=x, output_hidden_states=True)
        out, states = adapter.capture(x)
    assert torch.equal(out.logits, direct.logits) and torch.equal(out.pred_boxes, direct.pred_boxes)
    enc, dec = direct.encoder_hidden_states, direct.decoder_hidden_states
    ref = {
        "backbone": enc[0],
        "encoder.0": enc[1],
        "encoder.1": enc[2],
        "decoder.0": dec[1],
        "decoder.1": dec[2],
        "decoder.2": dec[3],
        "head": torch.cat([direct.logits, direct.pred_boxes], -1),
    }
    assert torch.equal(dec[3], direct.last_hidden_state)  # the last decoder state is the decoder output
    for layer in adapter.layers():
        got = states[layer.name]
        if layer.name == "backbone":  # transformers hands the encoder the flattened projected map
            assert got.dim() == 4 and layer.kind == "map"
            got = got.flatten(2).transpose(1, 2)
        assert torch.equal(got, ref[layer.name]), layer.name
    h, w = states["backbone"].shape[-2:]
    assert (h, w) == tuple(-(-s // 32) for s in x.shape[-2:])  # stride 32, rounded up
    assert states["head"].shape == (2, 6, 4 + 1 + 4)


def test_layer_metadata_has_spatial_shape_and_token_counts(saved) -> None:
    folder, _ = saved
    adapter = create_model("detr", name=str(folder), size=[480, 640])
    layers = {layer.name: layer for layer in adapter.layers()}
    assert layers["backbone"].shape == (32, 15, 20)  # the paper's 256 x 15 x 20 at d_model 32
    assert layers["backbone"].meta["spatial_shape"] == [15, 20]
    assert layers["encoder.1"].shape == (300, 32) and layers["encoder.1"].meta["encoder_tokens"] == 300
    assert layers["decoder.2"].shape == (6, 32) and layers["decoder.2"].meta["object_queries"] == 6
    assert layers["head"].kind == "logits" and layers["head"].meta["num_logits"] == 5
    assert {layers[n].kind for n in ("encoder.0", "decoder.0")} == {"tokens"}


def test_preprocessing_follows_the_image_processor_or_the_fixed_size(saved) -> None:
    folder, _ = saved
    proc_adapter = create_model("detr", name=str(folder))
    assert (proc_adapter.shortest_edge, proc_adapter.longest_edge) == (96, 160)
    assert proc_adapter.mean == (0.485, 0.456, 0.406) and proc_adapter.interpolation == "bilinear"
    assert proc_adapter.preprocess(images(1, 48, 64)).shape[-2:] == (96, 128)  # aspect ratio kept
    assert proc_adapter.preprocess(images(1, 40, 200)).shape[-2:] == (32, 160)  # longest edge capped
    fixed = create_model("detr", name=str(folder), size=[480, 640])
    assert fixed.input_shape == (3, 480, 640)
    assert fixed.preprocess(images(1, 100, 100)).shape[-2:] == (480, 640)  # stretched, no padding


@pytest.mark.parametrize("size", [None, [64, 96]])
def test_postprocess_inverts_preprocess(saved, size) -> None:
    folder, _ = saved
    adapter = create_model("detr", name=str(folder), size=size)
    img = images(2, *adapter.input_shape[1:])
    x = adapter.preprocess(img)
    assert not torch.allclose(x, img)
    assert (adapter.postprocess(x) - img).abs().max() < 1e-5


def test_missing_processor_config_uses_defaults_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import DetrForObjectDetection

    DetrForObjectDetection(tiny_config()).save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="probekit"):
        adapter = create_model("detr", name=str(tmp_path))
    assert "preprocessor_config" in caplog.text
    assert (adapter.shortest_edge, adapter.longest_edge) == (800, 1333)
    assert adapter.input_shape == (3, 800, 1066)  # the nominal 480x640 image under the default rule


def test_random_detr_from_config_and_weights_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    cfg = tiny_config().to_dict()
    cfg = {
        k: cfg[k]
        for k in (
            "d_model",
            "encoder_layers",
            "decoder_layers",
            "encoder_attention_heads",
            "decoder_attention_heads",
            "encoder_ffn_dim",
            "decoder_ffn_dim",
            "num_queries",
            "backbone_config",
        )
    }
    torch.manual_seed(0)
    a = create_model("detr", config=cfg, size=[64, 64])
    assert a.layer("decoder.2").shape == (6, 32)
    save_file(a.model.state_dict(), tmp_path / "w.safetensors")
    torch.manual_seed(1)
    b = create_model("detr", config=cfg, size=[64, 64], weights=str(tmp_path / "w.safetensors"))
    assert b.fingerprint() == a.fingerprint()
    with pytest.raises(SpecError, match="do not fit"):
        create_model(
            "detr",
            config={**cfg, "decoder_layers": 2},
            size=[64, 64],
            weights=str(tmp_path / "w.safetensors"),
        )


def test_pretrained_offline_says_how_to_give_a_local_checkpoint() -> None:
    with pytest.raises(SpecError) as err:
        create_model("detr", name="facebook/detr-resnet-50")
    text = str(err.value)
    assert "model.name" in text and "name: DIR" in text and "weights:" in text


def test_option_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="needs `name:`"):
        create_model("detr", pretrained=True, config={"d_model": 32})
    with pytest.raises(SpecError, match="stride 32"):
        create_model("detr", name="x", size=[8, 8])
    with pytest.raises(SpecError, match="no config.json"):
        create_model("detr", name=str(tmp_path))


def test_listed_by_the_cli_without_importing_heavy_libraries() -> None:
    assert "DETR" in listed_types("models")["detr"]
    assert heavy_modules_after_loading_plugins() == []
