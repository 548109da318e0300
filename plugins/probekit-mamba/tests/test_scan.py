"""The scans against a plain sequential recurrence and against transformers' own paths.

Every comparison runs twice (fixture ``path``): on the fused C++ kernel and on the pure-PyTorch
chunked scan (the fallback, forced by making the kernel look unavailable).
"""

from __future__ import annotations

import copy
import inspect
import logging
import shutil

import pytest
import torch
from probekit_mamba import _kernel, build_mamba, get_backend, set_backend
from probekit_mamba._backends import available_backends, mamba_ssm_available, resolve_backend
from probekit_mamba.scan import segment_sum, selective_scan, ssd_scan
from transformers import Mamba2Model, MambaModel
from transformers.models.mamba import modeling_mamba
from transformers.models.mamba2 import modeling_mamba2

LENGTHS = [1, 7, 64, 100]  # chunk 32: shorter than a chunk, exact multiples, and a ragged tail


@pytest.fixture(params=["kernel", "torch"])
def path(request, monkeypatch):
    """Which scan computes: ``kernel`` (checked to be called) or ``torch`` (the kernel switched off)."""
    if request.param == "torch":
        monkeypatch.setattr(_kernel, "available", lambda: False)
        yield "torch"
        return
    if not _kernel.available():
        pytest.skip(f"the fused scan kernel is unavailable: {_kernel.disable_reason()}")
    calls = []
    for name in ("mamba1_scan", "mamba2_scan"):
        fn = getattr(_kernel, name)
        monkeypatch.setattr(_kernel, name, lambda *a, _fn=fn, **k: calls.append(1) or _fn(*a, **k))
    yield "kernel"
    assert calls, "the kernel was never called"


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
def test_selective_scan_equals_recurrence_float64(path, length):
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
def test_ssd_scan_equals_recurrence_float64(path, length):
    i = _mamba2_inputs(length, torch.float64)
    y, last, states = ssd_scan(i["x"], i["dt"], i["A"], i["B"], i["C"], 32, D=i["D"], dt_bias=i["dt_bias"],
                               dt_softplus=True, initial_states=i["init"], return_final_states=True,
                               return_states=True)
    y0, last0, states0 = naive_ssd(**i)
    assert torch.allclose(y, y0, atol=1e-10, rtol=0)
    assert torch.allclose(last, last0, atol=1e-10, rtol=0)
    assert torch.allclose(states, states0, atol=1e-10, rtol=0)


def test_scans_stable_for_large_decays(path):
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
def test_selective_scan_matches_library_fp32_with_gradients(path, length):
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
def test_ssd_scan_matches_library_fp32_with_gradients(path, length):
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


# -- the fused kernel ----------------------------------------------------------------------------------
needs_kernel = pytest.mark.skipif(not _kernel.available(), reason="the fused scan kernel is unavailable here")


def _rand(g, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=g, dtype=dtype)


def _mamba1_kernel_inputs(b, d, n, length, dtype=torch.float64, seed=0):
    """u, delta, A, B, C, D, z, delta_bias, init: the layout of _kernel.mamba1_scan (u, delta, z (b, L, d))."""
    g = torch.Generator().manual_seed(seed)
    return [_rand(g, b, length, d, dtype=dtype), _rand(g, b, length, d, dtype=dtype),
            -torch.rand(d, n, generator=g, dtype=dtype) * 2 - 0.1, _rand(g, b, length, n, dtype=dtype),
            _rand(g, b, length, n, dtype=dtype), _rand(g, d, dtype=dtype), _rand(g, b, length, d, dtype=dtype),
            _rand(g, d, dtype=dtype), _rand(g, b, d, n, dtype=dtype)]


def _mamba2_kernel_inputs(b, length, heads, p, groups, n, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [_rand(g, b, length, heads, p, dtype=dtype),
            torch.rand(b, length, heads, generator=g, dtype=dtype) * 0.5 + 0.01,
            -torch.rand(heads, generator=g, dtype=dtype) * 2 - 0.1, _rand(g, b, length, groups, n, dtype=dtype),
            _rand(g, b, length, groups, n, dtype=dtype), _rand(g, b, heads, p, n, dtype=dtype)]


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="no C++ compiler here")
def test_kernel_builds_where_there_is_a_compiler():
    import os

    if os.environ.get("PROBEKIT_MAMBA_KERNEL", "1") == "0":
        pytest.skip("switched off by PROBEKIT_MAMBA_KERNEL=0")
    assert _kernel.available(), _kernel.disable_reason()


# d: one channel block (16) with a tail, several blocks; lengths: one chunk, ragged tails
@needs_kernel
@pytest.mark.parametrize("d,n,length,chunk", [(6, 4, 7, 3), (20, 2, 9, 4), (37, 2, 3, 32), (3, 1, 1, 4)])
@pytest.mark.parametrize("softplus", [True, False])
def test_kernel_mamba1_gradcheck_float64(d, n, length, chunk, softplus):
    """The hand-written backward against numerical derivatives (every input, initial and last state)."""
    *args, init = [t.requires_grad_(True) for t in _mamba1_kernel_inputs(2, d, n, length)]
    if not softplus:  # dt = delta + bias itself: keep it positive (else the state grows exponentially)
        args[1] = (args[1].detach().abs() + 0.05).requires_grad_(True)
        args[7] = (args[7].detach().abs() * 0.1).requires_grad_(True)

    def scan(*a):
        return _kernel.mamba1_scan(*a[:8], softplus, a[8], chunk=chunk)
    assert torch.autograd.gradcheck(scan, [*args, init])
    # without the optional inputs
    u, delta, A, B, C = args[:5]
    assert torch.autograd.gradcheck(lambda *a: _kernel.mamba1_scan(*a, delta_softplus=softplus, chunk=chunk),
                                    [u, delta, A, B, C])


@needs_kernel
@pytest.mark.parametrize("length,heads,p,groups,n,chunk", [(7, 4, 3, 2, 5, 3), (17, 6, 2, 3, 4, 8),
                                                           (1, 2, 5, 1, 16, 4)])
def test_kernel_mamba2_gradcheck_float64(length, heads, p, groups, n, chunk):
    args = [t.requires_grad_(True) for t in _mamba2_kernel_inputs(2, length, heads, p, groups, n)]
    assert torch.autograd.gradcheck(lambda *a: _kernel.mamba2_scan(*a, chunk=chunk), args)


@needs_kernel
@pytest.mark.parametrize("d,n,length", [(37, 16, 150), (5, 1, 1), (32, 8, 257)])
def test_kernel_mamba1_matches_sequential_reference_fp32(d, n, length):
    """Against transformers' sequential scan (the library's reference): outputs and gradients within 1e-5
    of the reference's scale (outputs reach ~70 here, where float32 itself rounds at ~1e-5)."""
    ref = inspect.unwrap(modeling_mamba.mamba_selective_scan)
    g = torch.Generator().manual_seed(length)
    i = dict(u=torch.randn(2, d, length, generator=g), delta=torch.randn(2, d, length, generator=g),
             A=-torch.rand(d, n, generator=g) * 4, B=torch.randn(2, n, length, generator=g),
             C=torch.randn(2, n, length, generator=g), D=torch.randn(d, generator=g),
             z=torch.randn(2, d, length, generator=g), delta_bias=torch.randn(d, generator=g))
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    results = {}
    for name, fn in (("reference", lambda a: ref(*[a[k] for k in names[:7]], delta_bias=a["delta_bias"],
                                                  delta_softplus=True, return_last_state=True)),
                     ("kernel", lambda a: selective_scan(*[a[k] for k in names], True, return_last_state=True))):
        a = {k: v.clone().requires_grad_(True) for k, v in i.items()}
        y, last = fn(a)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        ((y * w).mean() + last.mean()).backward()
        results[name] = y.detach(), last.detach(), {k: a[k].grad for k in names}
    (y0, s0, g0), (y1, s1, g1) = results["reference"], results["kernel"]
    assert _close(y1, y0) and _close(s1, s0)
    for k in names:
        assert _close(g1[k], g0[k]), k


def _close(a, ref, tol=1e-5):
    return (a - ref).abs().max() <= tol * max(1.0, ref.abs().max().item())


@needs_kernel
@pytest.mark.parametrize("length,heads,p,groups,n", [(257, 6, 4, 3, 8), (1, 2, 3, 1, 5), (130, 4, 16, 1, 16)])
def test_kernel_mamba2_matches_library_fp32(length, heads, p, groups, n):
    ref = inspect.unwrap(modeling_mamba2.mamba2_chunk_scan)
    x, dt, A, B, C, init = _mamba2_kernel_inputs(2, length, heads, p, groups, n, torch.float32, seed=length)
    D = torch.randn(heads)
    i = dict(x=x, dt=dt * 4 - 2, A=A, B=B, C=C, D=D, dt_bias=torch.randn(heads), init=init)
    results = {}
    for name, fn in (("reference", ref), ("kernel", ssd_scan)):
        a = {k: v.clone().requires_grad_(True) for k, v in i.items()}
        y, last = fn(a["x"], a["dt"], a["A"], a["B"], a["C"], 32, D=a["D"], dt_bias=a["dt_bias"],
                     dt_softplus=True, initial_states=a["init"], return_final_states=True)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        ((y * w).mean() + last.mean()).backward()
        results[name] = y.detach(), last.detach(), {k: v.grad for k, v in a.items()}
    (y0, s0, g0), (y1, s1, g1) = results["reference"], results["kernel"]
    assert _close(y1, y0) and _close(s1, s0)
    for k in g0:
        assert _close(g1[k], g0[k]), k


@needs_kernel
def test_kernel_results_do_not_depend_on_threads():
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            args = [t.requires_grad_(True) for t in _mamba1_kernel_inputs(3, 40, 8, 70, torch.float32)]
            y, last = _kernel.mamba1_scan(*args[:8], True, args[8], chunk=16)
            (y.sum() + last.sum()).backward()
            results.append([y.detach(), last.detach(), *(a.grad for a in args)])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@needs_kernel
def test_states_with_gradient_use_the_pytorch_scan(monkeypatch):
    """Per-position states that need a gradient come from the PyTorch scan (the kernel's have none)."""
    i = {k: v.requires_grad_(True) for k, v in _mamba1_inputs(40, torch.float32).items()}
    called = []
    monkeypatch.setattr(_kernel, "mamba1_scan", lambda *a, **k: called.append(1))
    y, states = selective_scan(*i.values(), True, return_states=True)
    assert not called and states.requires_grad
    states.sum().backward()
    assert i["B"].grad is not None


def test_kernel_build_failure_falls_back_with_one_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    monkeypatch.setenv("PROBEKIT_MAMBA_KERNEL_DIR", str(tmp_path))
    monkeypatch.delenv("PROBEKIT_MAMBA_KERNEL", raising=False)
    _kernel._library.cache_clear()
    try:
        with caplog.at_level(logging.DEBUG, logger="probekit_mamba"):
            i = _mamba1_inputs(50, torch.float64)
            y = selective_scan(*i.values(), True)
            j = _mamba2_inputs(50, torch.float64)
            y2 = ssd_scan(j["x"], j["dt"], j["A"], j["B"], j["C"], 32, D=j["D"], dt_bias=j["dt_bias"],
                          dt_softplus=True, initial_states=j["init"])
        lines = [r for r in caplog.records if r.name == "probekit_mamba"]
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING
        assert "unavailable" in lines[0].getMessage() and "PyTorch chunked scan" in lines[0].getMessage()
        assert not _kernel.available() and "false" in _kernel.disable_reason()
        assert torch.allclose(y, naive_selective_scan(**i)[0], atol=1e-10, rtol=0)
        assert torch.allclose(y2, naive_ssd(**j)[0], atol=1e-10, rtol=0)
    finally:
        _kernel._library.cache_clear()


def test_kernel_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("PROBEKIT_MAMBA_KERNEL", "0")
    _kernel._library.cache_clear()
    try:
        assert not _kernel.available() and "PROBEKIT_MAMBA_KERNEL" in _kernel.disable_reason()
    finally:
        _kernel._library.cache_clear()


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
def test_cpu_scan_matches_reference_model(path, arch, length):
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
def test_cached_generation_matches_reference(path, arch):
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
