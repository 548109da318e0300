import pytest
import torch
from torch import nn

from probekit._capture import CapturePoint, capture
from probekit.testing import mlp, small_cnn


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_output_identical_and_states_match_manual_forward():
    torch.manual_seed(0)
    model = small_cnn(in_channels=1, width=4).eval()
    x = torch.randn(3, 1, 8, 8)
    expected = model(x)
    names = [n for n, _ in model.named_modules() if n]
    out, states = capture(model, x, {n: n for n in names})
    assert torch.equal(out, expected)
    # the sequential forward, step by step, gives every captured state exactly
    h = x
    for name, module in model.named_children():
        h = module(h)
        assert torch.equal(states[name], h), name
    assert _hook_count(model) == 0


def test_no_hook_leak_when_forward_raises():
    model = mlp(in_features=4)
    with pytest.raises(RuntimeError):
        capture(model, torch.randn(2, 5), {"1": "1"})  # wrong input width
    assert _hook_count(model) == 0


def test_unknown_module_lists_choices():
    with pytest.raises(KeyError, match="module paths include"):
        capture(mlp(), torch.randn(1, 64), {"x": "nope"})


class TupleDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.shared = nn.Linear(4, 4)

    def forward(self, x):
        y = self.shared(self.a(x))
        z = self.shared(y)  # called twice in one forward
        return {"first": y, "second": z}, (z * 2, y)


class Wrap(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = TupleDict()

    def forward(self, x):
        d, t = self.inner(x)
        return d["second"] + t[0]


def test_tuple_dict_outputs_and_repeated_calls():
    torch.manual_seed(0)
    model = Wrap()
    x = torch.randn(2, 4)
    ref_y = model.inner.shared(model.inner.a(x))
    ref_z = model.inner.shared(ref_y)
    out, s = capture(model, x, {
        "dict_default": CapturePoint("inner", select=lambda o: o[0]["first"]),
        "tuple_idx": CapturePoint("inner", select=lambda o: o[1][1]),
        "first_call": CapturePoint("inner.shared", call=0),
        "last_call": CapturePoint("inner.shared"),
        "all_calls": CapturePoint("inner.shared", call="all"),
        "input": CapturePoint("inner.shared", input=True, call=0),
    })
    assert torch.equal(out, model(x))
    assert torch.equal(s["dict_default"], ref_y)
    assert torch.equal(s["tuple_idx"], ref_y)
    assert torch.equal(s["first_call"], ref_y)
    assert torch.equal(s["last_call"], ref_z)
    assert s["all_calls"].shape == (2, 2, 4)
    assert torch.equal(s["all_calls"][:, 1], ref_z)
    assert torch.equal(s["input"], model.inner.a(x))


def test_default_selectors_for_tuple_and_dict():
    class T(nn.Module):
        def forward(self, x):
            return (x + 1, "meta")

    class D(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = T()

        def forward(self, x):
            return {"last_hidden_state": self.t(x)[0] * 3, "other": x}

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.d = D()

        def forward(self, x):
            return self.d(x)["last_hidden_state"]

    x = torch.ones(1, 2)
    _, s = capture(M(), x, {"t": "d.t", "d": "d"})
    assert torch.equal(s["t"], x + 1)
    assert torch.equal(s["d"], (x + 1) * 3)


def test_inplace_ops_are_copied_so_states_stay_true():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True))
    x = torch.randn(4, 3)
    pre = model[0](x).detach().clone()
    _, s = capture(model, x, {"0": "0"})
    assert torch.equal(s["0"], pre)  # not overwritten by the in-place ReLU
    with pytest.raises(RuntimeError, match="modified in place"):
        capture(model, x, {"0": "0"}, copy=False)


def test_gradients_flow_when_not_detached():
    model = mlp(in_features=4, hidden=8)
    x = torch.randn(2, 4, requires_grad=True)
    out, s = capture(model, x, {"2": "2"}, detach=False)
    s["2"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
