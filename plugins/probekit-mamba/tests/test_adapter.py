"""The ``mamba`` model adapter: construction, layers, capture against the library's own outputs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from probekit_mamba import MambaAdapter, get_backend

import probekit
from probekit import SpecError, get_plugin_manager
from probekit.testing import reset_plugin_manager

MAMBA = dict(hidden_size=16, num_hidden_layers=3, state_size=4, expand=2, vocab_size=30)
MAMBA2 = dict(model_type="mamba2", hidden_size=16, num_hidden_layers=2, state_size=4, expand=2, num_heads=4,
              head_dim=8, n_groups=1, chunk_size=8, vocab_size=30)


@pytest.fixture(autouse=True)
def _fresh_plugins():
    reset_plugin_manager()
    yield
    reset_plugin_manager()


def _ids(batch=2, length=11, vocab=30, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_registered_with_import_strings_only():
    pm = get_plugin_manager()
    model = pm.get("models", "mamba")
    probe = pm.get("probes", "length-generalization")
    assert model.factory == "probekit_mamba._adapter:MambaAdapter"
    assert probe.factory == "probekit_mamba._lengthgen:LengthGeneralizationProbe"
    assert probe.options == "probekit_mamba._lengthgen_options:LengthGenOptions"
    assert probe.meta == {"needs_model": False, "computes": ["mse"], "accepts_metrics": []}
    assert "study 3" in probe.description
    # listing plugins imports neither torch nor transformers nor the probe's modules
    code = ("import sys; from probekit import get_plugin_manager; pm = get_plugin_manager(); "
            "pm.names('models'); pm.names('probes'); "
            "print(sorted(m for m in ('torch', 'transformers', 'probekit_mamba._lengthgen', "
            "'probekit_mamba._adapter') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_create_model_layers_and_kinds():
    adapter = probekit.create_model("mamba", config=MAMBA, backend="cpu-scan", seq_len=10)
    assert isinstance(adapter, MambaAdapter) and type(adapter.model).__name__ == "MambaModel"
    layers = {layer.name: layer for layer in adapter.layers()}
    names = list(layers)
    assert names[0] == "embed" and names[-1] == "norm" and "head" not in layers
    assert names[1:4] == ["layer.0", "layer.0.ssm_state", "layer.0.ssm_states"]
    assert layers["embed"].kind == "tokens" and layers["embed"].shape == (10, 16)
    assert layers["layer.2"].shape == (10, 16)
    assert layers["layer.1.ssm_state"].kind == "state" and layers["layer.1.ssm_state"].shape == (32, 4)
    assert layers["layer.1.ssm_states"].shape == (10, 32, 4)
    assert get_backend(adapter.model) == "cpu-scan"


def test_capture_equals_library_outputs():
    """Capture leaves the output unchanged; layers equal the library's output_hidden_states."""
    adapter = MambaAdapter(config=MAMBA, head=True, backend="cpu-scan")
    model = adapter.model.eval()
    ids = _ids()
    with torch.no_grad():
        out, states = adapter.capture(ids)
        direct = model(input_ids=ids, use_cache=False, output_hidden_states=True)
        embeds = model.backbone.embeddings(ids)
    assert torch.equal(out.logits, direct.logits)
    assert torch.equal(states["embed"], embeds)
    hidden = direct.hidden_states  # layer.0 .. layer.N-1, then the final norm
    assert len(hidden) == 4
    for i in range(3):
        assert torch.equal(states[f"layer.{i}"], hidden[i])
    assert torch.equal(states["norm"], hidden[-1])
    assert torch.equal(states["head"], direct.logits)
    # the per-position states end with the final state
    for i in range(3):
        last = states[f"layer.{i}.ssm_states"][:, -1]
        assert torch.allclose(last, states[f"layer.{i}.ssm_state"], atol=1e-6)


@pytest.mark.parametrize("config", [MAMBA, MAMBA2], ids=["mamba", "mamba2"])
def test_ssm_state_equals_library_cache(config):
    """The captured final SSM state is the recurrent state the library itself puts in its cache."""
    adapter = MambaAdapter(config=config, backend="cpu-scan")
    ids = _ids(length=19)
    with torch.no_grad():
        _, states = adapter.capture(ids, [f"layer.{i}.ssm_state" for i in range(config["num_hidden_layers"])])
        adapter.set_backend("reference")
        cache = adapter.model(input_ids=ids, use_cache=True).cache
    for i in range(config["num_hidden_layers"]):
        ref = cache.get_recurrent_state(i, state_idx=0)
        assert states[f"layer.{i}.ssm_state"].shape == ref.shape
        assert (states[f"layer.{i}.ssm_state"] - ref).abs().max() <= 1e-5


def test_per_position_states_only_when_asked():
    """Without a hook on ssm_states the forward does not compute them (no extra memory)."""
    adapter = MambaAdapter(config=MAMBA, backend="reference")
    seen = []
    mixer = adapter.model.layers[0].mixer
    handle = mixer.ssm_state.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    try:
        adapter.forward(_ids())
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 32, 4])]
    _, states = adapter.capture(_ids(), ["layer.0.ssm_states"])  # reference backend: computed by the scan
    assert states["layer.0.ssm_states"].shape == (2, 11, 32, 4)


def test_inputs_embeds_and_dict_inputs():
    adapter = MambaAdapter(config=MAMBA2, backend="cpu-scan")
    assert type(adapter.model).__name__ == "Mamba2Model"
    x = torch.randn(2, 9, 16)
    out, states = adapter.capture(x, ["embed", "layer.1", "layer.1.ssm_state"])
    assert torch.equal(states["embed"], x)
    direct = adapter.model(inputs_embeds=x, use_cache=False)
    assert torch.equal(out.last_hidden_state, direct.last_hidden_state)
    assert states["layer.1.ssm_state"].shape == (2, 4, 8, 4)  # heads, head_dim, state
    out2 = adapter.forward({"inputs_embeds": x})
    assert torch.equal(out2.last_hidden_state, out.last_hidden_state)
    assert adapter.preprocess(x) is x and adapter.postprocess(x) is x


def test_save_pretrained_and_load_by_name(tmp_path):
    adapter = MambaAdapter(config=MAMBA, head=True, backend="cpu-scan", use_conv=False)
    adapter.model.save_pretrained(tmp_path / "m")
    loaded = probekit.create_model("mamba", name=str(tmp_path / "m"), backend="cpu-scan")
    assert type(loaded.model).__name__ == "MambaForCausalLM"
    assert loaded.backbone.layers[0].mixer._probekit_use_conv is False  # saved in config.json
    ids = _ids()
    with torch.no_grad():
        a = adapter.forward(ids).logits
        b = loaded.forward(ids).logits
    assert torch.equal(a, b)
    assert loaded.fingerprint() == adapter.fingerprint()
    bare = MambaAdapter(config=MAMBA)
    bare.model.save_pretrained(tmp_path / "bare")
    assert type(MambaAdapter(name=str(tmp_path / "bare")).model).__name__ == "MambaModel"


def test_clear_errors():
    with pytest.raises(SpecError, match="cannot load Mamba model 'state-spaces/mamba-130m-hf'.*local dir"):
        MambaAdapter(name="state-spaces/mamba-130m-hf")
    with pytest.raises(SpecError, match="exactly one of"):
        probekit.create_model("mamba", name="x", config=MAMBA)
    with pytest.raises(SpecError, match="backend"):
        probekit.create_model("mamba", config=MAMBA, backend="fast")
    with pytest.raises(SpecError, match="unknown MambaConfig fields"):
        probekit.create_model("mamba", config={"hidden": 3})


def test_training_through_the_adapter_changes_states():
    """Gradients flow through cpu-scan inside the real model (a few Adam steps reduce a loss)."""
    torch.manual_seed(0)
    adapter = MambaAdapter(config=MAMBA, head=True, backend="cpu-scan")
    model = adapter.model.train()
    ids = _ids(batch=2, length=24)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_wraps_an_existing_model():
    from probekit_mamba import build_mamba

    model = build_mamba(MAMBA, backend="reference", use_conv=False)
    adapter = MambaAdapter(model=model, backend="cpu-scan")
    assert adapter.model is model and get_backend(model) == "cpu-scan"
    assert model.layers[0].mixer._probekit_use_conv is False  # kept, not reset to the default
    out, states = adapter.capture(_ids(), ["layer.2", "norm"])
    assert torch.equal(states["norm"], out.last_hidden_state)
