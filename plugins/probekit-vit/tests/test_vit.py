"""Tests of the ``vit`` adapter on tiny real timm and Hugging Face models built from configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from probekit import SpecError, create_model
from probekit.testing import heavy_modules_after_loading_plugins, listed_types

TIMM_KW = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2, "num_classes": 5}


def timm_vit(name: str = "vit_tiny_patch16_224", **extra):
    torch.manual_seed(0)
    return create_model("vit", name=name, kwargs={**TIMM_KW, **extra})


def hf_config(**extra):
    from transformers import ViTConfig

    return ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=128,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        num_labels=5,
        **extra,
    )


def expected_names(depth: int, head: bool = True) -> list[str]:
    names = ["embed"]
    for i in range(depth):
        names += [f"block.{i}.attn", f"block.{i}.mlp", f"block.{i}"]
    return names + ["norm"] + (["head"] if head else [])


def images(n: int = 3, size: int = 32, channels: int = 3) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(1))


# -- timm --------------------------------------------------------------------------------------
def timm_reference(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each canonical layer computed with timm's own API (forward_intermediates, the block's submodules)."""
    ref: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        ref["embed"] = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        final, inter = model.forward_intermediates(x, output_fmt="NLC", return_prefix_tokens=True)
        h = ref["embed"]
        for i, (spatial, prefix) in enumerate(inter):
            block = model.blocks[i]
            ref[f"block.{i}.attn"] = h + block.drop_path1(block.ls1(block.attn(block.norm1(h))))
            ref[f"block.{i}"] = torch.cat([prefix, spatial], dim=1)
            ref[f"block.{i}.mlp"] = ref[f"block.{i}"]
            h = ref[f"block.{i}"]
        ref["norm"] = final
        ref["head"] = model.forward_head(final)
    return ref


@pytest.mark.parametrize(
    "name,prefix",
    [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2), ("vit_base_patch16_224", 1)],
)
def test_timm_capture_equals_model_and_forward_intermediates(name: str, prefix: int) -> None:
    adapter = timm_vit(name)
    model = adapter.model
    assert [layer.name for layer in adapter.layers()] == expected_names(3)
    x = adapter.preprocess(images())
    with torch.no_grad():
        direct = model(x)
        out, states = adapter.capture(x)
    assert torch.equal(out, direct)
    ref = timm_reference(model, x)
    assert set(states) == {layer.name for layer in adapter.layers()}
    for layer in adapter.layers():
        assert torch.equal(states[layer.name], ref[layer.name]), layer.name
        assert tuple(states[layer.name].shape[1:]) == layer.shape
    assert torch.equal(states["head"], direct)
    assert states["embed"].shape == (3, 16 + prefix, 32)
    meta = adapter.layer("block.1").meta
    assert meta == {
        "patch_grid": [4, 4],
        "num_prefix_tokens": prefix,
        "patch_size": [8, 8],
        "image_size": [32, 32],
    }
    assert adapter.layer("block.1").kind == "tokens" and adapter.layer("head").kind == "logits"


def test_timm_preprocessing_comes_from_the_data_config() -> None:
    from timm.data import resolve_data_config

    for name in ("vit_tiny_patch16_224", "deit_tiny_patch16_224"):
        adapter = timm_vit(name)
        cfg = resolve_data_config({}, model=adapter.model)
        assert adapter.mean == tuple(cfg["mean"]) and adapter.std == tuple(cfg["std"])
        assert adapter.interpolation == cfg["interpolation"] == "bicubic"
        assert adapter.input_shape == (3, 32, 32)  # the model's img_size, not the pretrained 224
    assert timm_vit("deit_tiny_patch16_224").mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("source", ["timm", "hf"])
def test_postprocess_inverts_preprocess(source: str, tmp_path: Path) -> None:
    if source == "timm":
        adapter = timm_vit("deit_tiny_patch16_224")
    else:
        from transformers import ViTForImageClassification, ViTImageProcessor

        ViTForImageClassification(hf_config()).save_pretrained(tmp_path)
        ViTImageProcessor(
            image_mean=[0.1, 0.2, 0.3],
            image_std=[0.4, 0.5, 0.6],
            resample=3,
            size={"height": 32, "width": 32},
        ).save_pretrained(tmp_path)
        adapter = create_model("vit", source="hf", name=str(tmp_path))
        assert adapter.mean == (0.1, 0.2, 0.3) and adapter.std == (0.4, 0.5, 0.6)
        assert adapter.interpolation == "bicubic"
    img = images()
    x = adapter.preprocess(img)
    assert not torch.allclose(x, img)  # it did normalise
    assert (adapter.postprocess(x) - img).abs().max() < 1e-5


def test_grayscale_timm_vit_uses_one_channel_statistics() -> None:
    adapter = timm_vit(in_chans=1)
    assert adapter.input_shape == (1, 32, 32) and len(adapter.mean) == 1
    img = images(channels=1)
    assert (adapter.postprocess(adapter.preprocess(img)) - img).abs().max() < 1e-5
    out, states = adapter.capture(adapter.preprocess(img), ["block.2"])
    assert states["block.2"].shape == (3, 17, 32)


def test_images_of_another_size_are_resized_to_the_model_input() -> None:
    adapter = timm_vit()
    x = adapter.preprocess(images(size=48))
    assert x.shape == (3, 3, 32, 32)


def test_timm_weights_file_is_loaded(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = timm_vit()
    save_file(source.model.state_dict(), tmp_path / "w.safetensors")
    torch.save(source.model.state_dict(), tmp_path / "w.pt")
    for file in ("w.safetensors", "w.pt"):
        torch.manual_seed(123)  # a different random init, overwritten by the file
        loaded = create_model(
            "vit", name="vit_tiny_patch16_224", kwargs=TIMM_KW, weights=str(tmp_path / file)
        )
        for k, v in source.model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[k], v), k
        assert loaded.fingerprint() == source.fingerprint()
    with pytest.raises(SpecError, match="do not fit"):
        create_model(
            "vit", name="vit_tiny_patch16_224", kwargs={**TIMM_KW, "depth": 4}, weights=str(tmp_path / "w.pt")
        )


# -- Hugging Face -------------------------------------------------------------------------------
def hf_reference(model, x: torch.Tensor, n_layers: int) -> dict[str, torch.Tensor]:
    """Canonical layers from transformers' own output_hidden_states (and the layer's own submodules)."""
    base = model.vit if hasattr(model, "vit") else model
    with torch.no_grad():
        out = base(x, output_hidden_states=True)
        hs = out.hidden_states
        ref = {"embed": hs[0], "norm": out.last_hidden_state}
        layers = [m for m in base.modules() if type(m).__name__ == "ViTLayer"]
        assert len(layers) == n_layers == len(hs) - 1
        for i, layer in enumerate(layers):
            attn = layer.attention(layer.layernorm_before(hs[i]))
            attn = attn[0] if isinstance(attn, tuple) else attn
            ref[f"block.{i}.attn"] = hs[i] + attn
            ref[f"block.{i}"] = ref[f"block.{i}.mlp"] = hs[i + 1]
        if hasattr(model, "classifier"):
            ref["head"] = model(x).logits
    return ref


@pytest.mark.parametrize("classifier", [True, False])
def test_hf_saved_and_loaded_capture_equals_hidden_states(
    classifier: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import ViTForImageClassification, ViTModel

    torch.manual_seed(0)
    saved = (ViTForImageClassification if classifier else ViTModel)(hf_config()).eval()
    saved.save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="probekit"):
        adapter = create_model("vit", source="hf", name=str(tmp_path))
    assert "preprocessor_config" in caplog.text
    model = adapter.model
    assert type(model) is type(saved)
    for k, v in saved.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert [layer.name for layer in adapter.layers()] == expected_names(3, head=classifier)
    assert (adapter.mean, adapter.std, adapter.interpolation) == ((0.5,) * 3, (0.5,) * 3, "bilinear")
    x = adapter.preprocess(images())
    with torch.no_grad():
        direct = model(x)
        out, states = adapter.capture(x)
    key = "logits" if classifier else "last_hidden_state"
    assert torch.equal(out[key], direct[key])
    ref = hf_reference(model, x, 3)
    for layer in adapter.layers():
        assert torch.equal(states[layer.name], ref[layer.name]), layer.name
    assert adapter.layer("embed").meta["patch_grid"] == [4, 4]
    assert adapter.layer("embed").shape == (17, 32)


def test_hf_random_init_from_config_and_config_overrides(tmp_path: Path) -> None:
    from transformers import ViTForImageClassification

    torch.manual_seed(0)
    ViTForImageClassification(hf_config()).save_pretrained(tmp_path)
    adapter = create_model("vit", source="hf", name=str(tmp_path), pretrained=False, kwargs={"num_labels": 7})
    assert adapter.layer("head").shape == (7,)
    assert adapter.layer("head").meta == {"num_classes": 7}
    with pytest.raises(SpecError, match="do not fit"):
        create_model("vit", source="hf", name=str(tmp_path), kwargs={"num_labels": 7})


# -- timm and HF agree ------------------------------------------------------------------------
def timm_to_hf(timm_model, hf_model) -> None:
    """Copy timm VisionTransformer weights into a transformers ViTForImageClassification."""
    src = timm_model.state_dict()
    dst = hf_model.state_dict()
    d = timm_model.embed_dim
    layers = [k.split(".layernorm_after")[0] for k in dst if k.endswith("layernorm_after.weight")]

    def attn_key(layer: str, name: str, kind: str) -> str:
        new = f"{layer}.attention.{name}_proj.{kind}"  # transformers >= 5
        return (
            new
            if new in dst
            else f"{layer}.attention.attention.{ {'q': 'query', 'k': 'key', 'v': 'value'}[name] }.{kind}"
        )

    out = {
        "vit.embeddings.cls_token": src["cls_token"],
        "vit.embeddings.position_embeddings": src["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": src["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": src["patch_embed.proj.bias"],
        "vit.layernorm.weight": src["norm.weight"],
        "vit.layernorm.bias": src["norm.bias"],
        "classifier.weight": src["head.weight"],
        "classifier.bias": src["head.bias"],
    }
    for i, layer in enumerate(layers):
        b = f"blocks.{i}"
        for kind in ("weight", "bias"):
            qkv = src[f"{b}.attn.qkv.{kind}"]
            for j, name in enumerate("qkv"):
                out[attn_key(layer, name, kind)] = qkv[j * d : (j + 1) * d]
            o = f"{layer}.attention.o_proj.{kind}"
            out[o if o in dst else f"{layer}.attention.output.dense.{kind}"] = src[f"{b}.attn.proj.{kind}"]
            out[f"{layer}.layernorm_before.{kind}"] = src[f"{b}.norm1.{kind}"]
            out[f"{layer}.layernorm_after.{kind}"] = src[f"{b}.norm2.{kind}"]
            fc1, fc2 = f"{layer}.mlp.fc1.{kind}", f"{layer}.mlp.fc2.{kind}"
            out[fc1 if fc1 in dst else f"{layer}.intermediate.dense.{kind}"] = src[f"{b}.mlp.fc1.{kind}"]
            out[fc2 if fc2 in dst else f"{layer}.output.dense.{kind}"] = src[f"{b}.mlp.fc2.{kind}"]
    assert set(out) == set(dst), set(dst) ^ set(out)
    hf_model.load_state_dict(out, strict=True)


def test_timm_and_hf_with_the_same_weights_give_the_same_states(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import ViTForImageClassification

    timm_adapter = timm_vit()
    hf_model = ViTForImageClassification(hf_config()).eval()
    timm_to_hf(timm_adapter.model, hf_model)
    hf_model.save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="probekit"):
        hf_adapter = create_model("vit", source="hf", name=str(tmp_path))
    assert "preprocessor_config" in caplog.text
    names = [layer.name for layer in timm_adapter.layers()]
    assert names == [layer.name for layer in hf_adapter.layers()]
    assert [layer.shape for layer in timm_adapter.layers()] == [layer.shape for layer in hf_adapter.layers()]
    x = images() * 2 - 1  # the same model-ready input for both (their default normalisations differ)
    with torch.no_grad():
        _, a = timm_adapter.capture(x)
        _, b = hf_adapter.capture(x)
    for name in names:
        # fused vs separate q/k/v projections: equal up to float rounding
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)
    assert a["head"].abs().max() > 0.01  # not trivially equal


# -- errors, registration, an end-to-end run -------------------------------------------------
def test_pretrained_offline_says_how_to_give_local_weights() -> None:
    with pytest.raises(SpecError) as err:
        create_model("vit", name="vit_tiny_patch16_224", pretrained=True)
    assert "weights:" in str(err.value) and "model.pretrained" in str(err.value)
    with pytest.raises(SpecError) as err:
        create_model("vit", source="hf", name="google/vit-base-patch16-224")
    assert "save_pretrained" in str(err.value) and "weights:" in str(err.value)


def test_option_errors() -> None:
    with pytest.raises(SpecError, match="Did you mean 'vit_tiny_patch16_224'"):
        create_model("vit", name="vit_tiny_patch16_244")
    with pytest.raises(SpecError, match="depht"):
        create_model("vit", name="vit_tiny_patch16_224", kwargs={"depht": 2})
    with pytest.raises(SpecError, match="not a VisionTransformer"):
        create_model("vit", name="resnet18")
    with pytest.raises(SpecError, match="not both"):
        create_model("vit", name="vit_tiny_patch16_224", pretrained=True, weights=__file__)
    with pytest.raises(SpecError, match="extra|not permitted|unknown|Extra"):
        create_model("vit", name="vit_tiny_patch16_224", img_size=32)
    with pytest.raises(KeyError, match="unknown layer .block.9..*block.2"):
        timm_vit().capture(torch.zeros(1, 3, 32, 32), ["block.9"])


def test_listed_by_the_cli_without_importing_heavy_libraries() -> None:
    assert "Vision Transformer" in listed_types("models")["vit"]
    assert heavy_modules_after_loading_plugins() == []



def test_run_trains_a_tiny_vit_and_probes_it(tmp_path: Path) -> None:
    import probekit

    spec = {
        "name": "vit-tiny",
        "seed": 0,
        "device": "cpu",
        "model": {
            "type": "vit",
            "name": "vit_tiny_patch16_224",
            "kwargs": {
                "img_size": 8,
                "patch_size": 2,
                "depth": 2,
                "embed_dim": 32,
                "num_heads": 2,
                "in_chans": 1,
                "num_classes": 10,
            },
            "train": {"epochs": 2, "lr": 0.003, "batch_size": 64},
        },
        "data": {"type": "digits", "batch_size": 256, "limit": 600, "test_limit": 200},
        "probe": {
            "type": "linear",
            "layers": ["embed", "block.0.attn", "block.1", "norm", "head"],
            "epochs": 10,
        },
        "metrics": ["accuracy"],
    }
    results = probekit.run(spec, tmp_path / "run")
    acc = results["accuracy"]
    assert set(acc) == {"embed", "block.0.attn", "block.1", "norm", "head"}
    # 8x8 digits are nearly linearly separable from the pixels, so the token layers decode the class well;
    # the 10 logits of a ViT trained for two epochs only carry less, but more than chance (0.1)
    assert min(acc[n] for n in ("embed", "block.0.attn", "block.1", "norm")) > 0.85, acc
    assert acc["head"] > 0.15, acc
    assert (tmp_path / "run" / "figures" / "accuracy_vs_depth.png").exists()
