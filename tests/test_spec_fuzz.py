"""Property-based fuzzing of invalid specs: every one exits 2 with a one-line message, no traceback."""

import copy
import io
from contextlib import redirect_stderr

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probekit._cli import main

VALID = {
    "name": "fuzz",
    "seed": 0,
    "device": "cpu",
    "model": {"type": "module", "factory": "probekit.testing:small_cnn", "kwargs": {"in_channels": 1},
              "train": {"epochs": 1, "lr": 0.001}},
    "data": {"type": "digits", "limit": 100, "batch_size": 32, "test_fraction": 0.2},
    "probe": {"type": "linear", "layers": ["5"], "epochs": 2, "lr": 0.01, "pool": "auto"},
    "metrics": ["accuracy", {"type": "accuracy"}],  # the linear probe accepts accuracy only
}

# (path, a value of the wrong type or out of range for it)
WRONG_VALUES = st.sampled_from([
    (("seed",), "zero"), (("seed",), -1), (("seed",), [1]), (("device",), "gpu7"), (("name",), "has space"),
    (("name",), {"a": 1}), (("model",), "module"), (("model", "type"), 5), (("model", "factory"), "nocolon"),
    (("model", "kwargs"), [1, 2]), (("model", "train", "epochs"), 0), (("model", "train", "lr"), -1),
    (("model", "train", "optimizer"), "lbfgs"), (("data", "limit"), 0), (("data", "batch_size"), "big"),
    (("data", "test_fraction"), 1.5), (("data", "size"), "x"), (("probe", "layers"), 3),
    (("probe", "epochs"), "many"), (("probe", "pool"), "max"), (("probe", "lr"), 0), (("metrics",), "psnr"),
    (("metrics", 1, "data_range"), -2), (("probe",), None), (("data", "type"), None),
    (("model", "weights"), "/nonexistent/w.pt"), (("model", "input_shape"), [1, 2]),
])
SECTIONS = st.sampled_from([(), ("model",), ("model", "train"), ("data",), ("probe",), ("metrics", 1)])
TYPE_SLOTS = st.sampled_from([("model", "type"), ("data", "type"), ("probe", "type"), ("metrics", 0),
                              ("metrics", 1, "type")])
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12)


def _set(spec, path, value):
    node = spec
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


@st.composite
def invalid_specs(draw):
    spec = copy.deepcopy(VALID)
    kind = draw(st.sampled_from(["unknown_key", "wrong_value", "unknown_type", "missing", "garbage", "override"]))
    if kind == "unknown_key":
        section = draw(SECTIONS)
        node = spec
        for p in section:
            node = node[p]
        key = "zz" + draw(NAMES)
        node[key] = draw(st.one_of(st.integers(), st.text(max_size=5), st.none()))
    elif kind == "wrong_value":
        path, value = draw(WRONG_VALUES)
        _set(spec, path, value)
    elif kind == "unknown_type":
        _set(spec, draw(TYPE_SLOTS), "qq" + draw(NAMES))
    elif kind == "missing":
        path = draw(st.sampled_from([("probe",), ("probe", "type"), ("probe", "layers"), ("model", "type"),
                                     ("model", "factory"), ("data",), ("data", "type"), ("model",)]))
        node = spec
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]
    elif kind == "override":  # a valid file made invalid by a --set
        key = draw(st.sampled_from(["zz_extra.key=1", "seed=abc", "probe.epochs=-3", "name.x=1", "metrics.9=mse",
                                    "probe.type=nope", "data=", "=3", "model.kwargs.in_channels"]))
        return yaml.safe_dump(spec), ["--set", key]
    else:
        return draw(st.sampled_from(["probe: {type: linear", "- a\n- b\n", "::", "probe:\n\t- x", "42",
                                     "probe: [", "name: 'unclosed"])), []
    return yaml.safe_dump(spec), []


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(case=invalid_specs())
def test_invalid_specs_exit_2_with_a_message(tmp_path_factory, case):
    text, extra = case
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_text(text)
    args = ["validate", str(path), *extra]
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(args)
    message = err.getvalue().strip()
    assert code == 2, (text, extra, message)
    assert message.startswith("error: ") and "\n" not in message and len(message) > 30, message
    assert "Traceback" not in message


def test_the_valid_base_spec_is_valid(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(VALID))
    assert main(["validate", str(path)]) == 0
