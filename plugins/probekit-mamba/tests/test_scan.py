"""The chunked scans against a plain sequential recurrence and against transformers' own paths."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from probekit_mamba import build_mamba, get_backend, set_backend
from probekit_mamba._backends import available_backends, mamba_ssm_available, resolve_backend
from probekit_mamba.scan import segment_sum, selective_scan, ssd_scan
from transformers import Mamba2Model, MambaModel
from transformers.models.mamba import modeling_mamba
from transformers.models.mamba2 import modeling_mamba2

LENGTHS = [1, 7, 64, 100]  # chunk 32: shorter than a chunk, exact multiples, and a ragged tail


# -- naive recurrences (float64), written from the equations ------------------------------------
def naive_selective_scan(u, delta, A, B, C, D, z, delta_bias):
    dt = torch.nn.functional.softplus(delta + delta_bias[:, None])
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    ys, hs = [], []
    for t in range(u.shape[2]):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
        hs.append(h)
    y = (torch.stack(ys, -1) + u * D[:, None]) * torch.nn.functional.silu(z)
    return y, h, torch.stack(hs, 1)


def naive_ssd(x, dt, A, B, C, D, dt_bias, init):
    b, length, heads, p = x.shape
    rep = heads // B.shape[2]
    B, C = B.repeat_interleave(rep, 2), C.repeat_interleave(rep, 2)
    dt = torch.nn.functional.softplus(dt + dt_bias)
    h = init.clone()
    ys, hs = [], []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((h * C[:, t, :, None, :]).sum(-1) + x[:, t] * D[:, None])
        hs.append(h)
    return torch.stack(ys, 1), h, torch.stack(hs, 1)


def _mamba1_inputs(length, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    b, d, n = 2, 6, 4

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype)
    return dict(u=r(b, d, length), delta=r(b, d, length) * scale,
                A=-torch.rand(d, n, generator=g, dtype=dtype) * 4,
                B=r(b, n, length), C=r(b, n, length), D=r(d), z=r(b, d, length), delta_bias=r(d))


def _mamba2_inputs(length, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    b, heads, p, groups, n = 2, 4, 3, 2, 5

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype)
    return dict(x=r(b, length, heads, p), dt=r(b, length, heads) * scale,
                A=-torch.rand(heads, generator=g, dtype=dtype) * 4, B=r(b, length, groups, n),
                C=r(b, length, groups, n), D=r(heads), dt_bias=r(heads), init=r(b, heads, p, n))


def test_segment_sum():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    s = segment_sum(x)
    assert s[3, 1].item() == 3 + 4 and s[2, 0].item() == 5 and s[1, 1].item() == 0
    assert torch.isinf(s[0, 1]) and s[0, 1] < 0


@pytest.mark.parametrize("length", LENGTHS)
def test_selective_scan_equals_recurrence_float64(length):
    i = _mamba1_inputs(length, torch.float64)
    y, last, states = selective_scan(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"],
                                     i["delta_bias"],
                                     True, chunk_size=32, return_last_state=True, return_states=True)
    y0, last0, states0 = naive_selective_scan(**i)
    assert y.shape == y0.shape and states.shape == (2, length, 6, 4)
    assert torch.allclose(y, y0, atol=1e-10, rtol=0)
    assert torch.allclose(last, last0, atol=1e-10, rtol=0)
    assert torch.allclose(states, states0, atol=1e-10, rtol=0)


@pytest.mark.parametrize("length", LENGTHS)
def test_ssd_scan_equals_recurrence_float64(length):
    i = _mamba2_inputs(length, torch.float64)
    y, last, states = ssd_scan(i["x"], i["dt"], i["A"], i["B"], i["C"], 32, D=i["D"], dt_bias=i["dt_bias"],
                               dt_softplus=True, initial_states=i["init"], return_final_states=True,
                               return_states=True)
    y0, last0, states0 = naive_ssd(**i)
    assert torch.allclose(y, y0, atol=1e-10, rtol=0)
    assert torch.allclose(last, last0, atol=1e-10, rtol=0)
    assert torch.allclose(states, states0, atol=1e-10, rtol=0)


def test_scans_stable_for_large_decays():
    """dt * A far below -88 (exp underflows) must not give inf or nan, values or gradients."""
    i = _mamba1_inputs(100, torch.float32, scale=60.0)
    for v in i.values():
        v.requires_grad_(True)
    y = selective_scan(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"], i["delta_bias"], True)
    y.sum().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(v.grad).all() for v in i.values())
    j = {k: v.detach().double() for k, v in i.items()}
    assert torch.allclose(y.double(), naive_selective_scan(**j)[0], atol=1e-3, rtol=1e-4)
    k = _mamba2_inputs(100, torch.float32, scale=60.0)
    y2 = ssd_scan(k["x"], k["dt"], k["A"], k["B"], k["C"], 32, D=k["D"], dt_bias=k["dt_bias"],
                  dt_softplus=True)
    assert torch.isfinite(y2).all()


@pytest.mark.parametrize("length", LENGTHS)
def test_selective_scan_matches_library_fp32_with_gradients(length):
    ref = inspect.unwrap(modeling_mamba.mamba_selective_scan)
    i = _mamba1_inputs(length, torch.float32, seed=length)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    a = {k: v.clone().requires_grad_(True) for k, v in i.items()}
    b = {k: v.clone().requires_grad_(True) for k, v in i.items()}
    w = torch.randn(2, 6, length, generator=torch.Generator().manual_seed(1))
    ya, sa = ref(*[a[k] for k in names[:7]], delta_bias=a["delta_bias"], delta_softplus=True,
                 return_last_state=True)
    yb, sb = selective_scan(*[b[k] for k in names], True, chunk_size=32, return_last_state=True)
    ((ya * w).mean() + sa.mean()).backward()
    ((yb * w).mean() + sb.mean()).backward()
    assert (ya - yb).abs().max() <= 1e-5 and (sa - sb).abs().max() <= 1e-5
    for k in names:
        assert (a[k].grad - b[k].grad).abs().max() <= 1e-5, k


@pytest.mark.parametrize("length", LENGTHS)
def test_ssd_scan_matches_library_fp32_with_gradients(length):
    ref = inspect.unwrap(modeling_mamba2.mamba2_chunk_scan)
    i = _mamba2_inputs(length, torch.float32, seed=length)
    names = ["x", "dt", "A", "B", "C", "D", "dt_bias", "init"]
    a = {k: v.clone().requires_grad_(True) for k, v in i.items()}
    b = {k: v.clone().requires_grad_(True) for k, v in i.items()}
    w = torch.randn(2, length, 4, 3, generator=torch.Generator().manual_seed(1))

    def call(fn, t):
        return fn(t["x"], t["dt"], t["A"], t["B"], t["C"], 32, D=t["D"], dt_bias=t["dt_bias"],
                  dt_softplus=True, initial_states=t["init"], return_final_states=True)
    ya, sa = call(ref, a)
    yb, sb = call(ssd_scan, b)
    ((ya * w).mean() + sa.mean()).backward()
    ((yb * w).mean() + sb.mean()).backward()
    assert (ya - yb).abs().max() <= 1e-5 and (sa - sb).abs().max() <= 1e-5
    for k in names:
        assert (a[k].grad - b[k].grad).abs().max() <= 1e-5, k


# -- whole models -----------------------------------------------------------------------------------
CONFIGS = {
    "mamba": dict(hidden_size=16, num_hidden_layers=2, state_size=8, expand=2, vocab_size=40),
    "mamba2": dict(model_type="mamba2", hidden_size=16, num_hidden_layers=2, state_size=8, expand=2,
                   num_heads=4, head_dim=8, n_groups=2, chunk_size=16, vocab_size=40),
}


def _fwd_bwd(model, ids, w):
    model.zero_grad(set_to_none=True)
    y = model(input_ids=ids, use_cache=False).last_hidden_state
    (y * w).mean().backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
@pytest.mark.parametrize("length", LENGTHS)
def test_cpu_scan_matches_reference_model(arch, length):
    """Done criterion 2: outputs and gradients of every parameter, fp32, max abs diff <= 1e-5."""
    torch.manual_seed(0)
    model = build_mamba(CONFIGS[arch], backend="reference", chunk_size=32)
    model.train()
    ids = torch.randint(0, 40, (3, length), generator=torch.Generator().manual_seed(length))
    w = torch.randn(3, length, 16, generator=torch.Generator().manual_seed(2))
    y_ref, g_ref = _fwd_bwd(model, ids, w)
    set_backend(model, "cpu-scan")
    assert get_backend(model) == "cpu-scan"
    y, g = _fwd_bwd(model, ids, w)
    assert (y - y_ref).abs().max() <= 1e-5
    assert g.keys() == g_ref.keys() and len(g) > 5
    for k in g:
        assert (g[k] - g_ref[k]).abs().max() <= 1e-5, k


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_reference_backend_is_the_library_forward(arch):
    """The patched forward with backend=reference computes exactly what the unpatched library does."""
    torch.manual_seed(0)
    model = build_mamba(CONFIGS[arch], backend="reference")
    plain = (MambaModel if arch == "mamba" else Mamba2Model)(copy.deepcopy(model.config))
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, 40, (2, 37))
    for mode in ("train", "eval"):
        model.train(mode == "train")
        plain.train(mode == "train")
        assert torch.equal(model(ids).last_hidden_state, plain(ids).last_hidden_state)
    assert type(model) is type(plain) and model.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_use_conv_false_is_an_identity_conv(arch):
    """Bypassing conv1d equals the library's model with a conv that passes its input through."""
    torch.manual_seed(0)
    model = build_mamba(CONFIGS[arch], backend="cpu-scan", use_conv=False)
    assert model.config.probekit_use_conv is False
    plain = (MambaModel if arch == "mamba" else Mamba2Model)(copy.deepcopy(model.config))
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer in plain.layers:
            conv = layer.mixer.conv1d
            conv.weight.zero_()
            conv.weight[..., -1] = 1.0  # causal conv: the last tap is the current position
            conv.bias.zero_()
    ids = torch.randint(0, 40, (2, 50))
    y = model(ids, use_cache=False).last_hidden_state
    assert (y - plain(ids, use_cache=False).last_hidden_state).abs().max() <= 1e-5
    # and it is not the model with its conv
    assert (y - set_backend(model, "cpu-scan", use_conv=True)(ids).last_hidden_state).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_cached_generation_matches_reference(arch):
    """With a cache (prefill, then one-token steps) cpu-scan matches the library's path."""
    torch.manual_seed(0)
    model = build_mamba(CONFIGS[arch], backend="reference", head=True).eval()
    ids = torch.randint(0, 40, (2, 20))
    outs = {}
    for backend in ("reference", "cpu-scan"):
        set_backend(model, backend)
        with torch.no_grad():
            outs[backend] = model.generate(ids, max_new_tokens=4, do_sample=False, output_logits=True,
                                           return_dict_in_generate=True)
    assert torch.equal(outs["reference"].sequences, outs["cpu-scan"].sequences)
    for a, b in zip(outs["reference"].logits, outs["cpu-scan"].logits):
        assert (a - b).abs().max() <= 1e-4


def test_backend_names_and_errors():
    assert resolve_backend("auto", "cpu") == "cpu-scan"
    assert "cpu-scan" in available_backends() and "reference" in available_backends()
    with pytest.raises(ValueError, match="unknown Mamba backend"):
        resolve_backend("fast")
    with pytest.raises(TypeError, match="no transformers MambaMixer"):
        set_backend(torch.nn.Linear(2, 2), "cpu-scan")
    with pytest.raises(ValueError, match="unknown MambaConfig fields"):
        build_mamba({"hidden_sise": 16})


@pytest.mark.skipif(mamba_ssm_available(), reason="mamba-ssm is installed here")
def test_cuda_backend_without_mamba_ssm_says_how_to_fix():
    with pytest.raises(RuntimeError, match=r"pip install 'probekit-mamba\[cuda\]'"):
        build_mamba(CONFIGS["mamba"], backend="cuda")


needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and mamba_ssm_available()),
                                reason="the cuda backend needs a CUDA GPU and mamba-ssm (pip install "
                                       "'probekit-mamba[cuda]')")


@needs_cuda
@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_cuda_backend_matches_reference(arch):
    torch.manual_seed(0)
    model = build_mamba(CONFIGS[arch], backend="reference").cuda().train()
    ids = torch.randint(0, 40, (3, 100), device="cuda")
    w = torch.randn(3, 100, 16, device="cuda")
    y_ref, g_ref = _fwd_bwd(model, ids, w)
    for backend in ("cuda", "auto"):
        set_backend(model, backend)
        y, g = _fwd_bwd(model, ids, w)
        assert (y - y_ref).abs().max() <= 1e-4
        for k in g:
            assert (g[k] - g_ref[k]).abs().max() <= 1e-3, k
