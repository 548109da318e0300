import json
import os
import subprocess
import sys
import textwrap

import pytest

from probekit._cli import main

GOOD = """
name: ok
model: {type: module, factory: "probekit.testing:small_cnn", kwargs: {in_channels: 1}}
data: {type: digits}
probe: {type: linear, layers: ["5"]}
metrics: [accuracy]
"""


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "probekit", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def _spec(tmp_path, text):
    p = tmp_path / "spec.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_help_and_plugins_do_not_import_heavy_libraries():
    code = ("import sys\nfrom probekit._cli import main\n"
            "for argv in (['--help'], ['plugins'], ['plugins', '--json'], ['list', 'models']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'timm', 'transformers', 'torchvision') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_validate_good_spec(tmp_path, capsys):
    assert main(["validate", str(_spec(tmp_path, GOOD))]) == 0
    assert "valid" in capsys.readouterr().out


BAD = [
    # (spec text or None, extra args, expected fragments of the message)
    (GOOD + "colour: red\n", [], ["spec.yaml", "colour", "unknown key", "Valid keys"]),
    (GOOD.replace("name: ok", "name: ok\nseed: many"), [], ["seed", "integer", "expected type"]),
    (GOOD.replace("type: module", "type: mamba"), [],
     ["model.type", "unknown model 'mamba'", "pip install probekit-mamba"]),
    (GOOD.replace("type: linear", "type: linaer"), [],
     ["probe.type", "unknown probe 'linaer'", "Did you mean 'linear'"]),
    (GOOD.replace("[accuracy]", "[acuracy]"), [], ["metrics[0].type", "unknown metric", "accuracy"]),
    (GOOD.replace("type: digits}", "type: digits, size: many}"), [], ["data.size", "integer"]),
    (GOOD.replace("kwargs: {in_channels: 1}", "weights: nothere.pt"), [], ["model.weights", "file not found"]),
    (GOOD.replace("layers: [\"5\"]", "layerz: [\"5\"]"), [], ["probe", "layerz", "unknown key"]),
    ("name: x\nprobe: {type: linear\n", [], ["invalid YAML", "line"]),
    (GOOD, ["--set", "name.value=3"], ["--set", "name", "is a value, not a section"]),
    (GOOD, ["--set", "noequals"], ["--set", "KEY=VALUE"]),
    (GOOD, ["--set", "metrics.7=mse"], ["metrics.7", "not an index"]),
    (GOOD.replace("probe: {type: linear, layers: [\"5\"]}\n", ""), [], ["probe", "required key is missing"]),
]


@pytest.mark.parametrize("text,args,fragments", BAD)
def test_bad_specs_exit_2_with_one_paragraph_and_no_traceback(tmp_path, text, args, fragments):
    path = _spec(tmp_path, text)
    # only the core's plugins: 'mamba' must be unknown even where probekit-mamba is installed
    res = _cli("validate", str(path), *args, env={"PROBEKIT_LOAD_PLUGINS": ""})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    message = res.stderr.strip()
    assert message.count("\n") == 0, message  # one paragraph
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_spec_file(tmp_path):
    res = _cli("validate", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "not found" in res.stderr and "Traceback" not in res.stderr


def test_bad_spec_in_run_exits_2_too(tmp_path):
    res = _cli("run", str(_spec(tmp_path, GOOD + "oops: 1\n")), "-o", str(tmp_path / "r"))
    assert res.returncode == 2 and "oops" in res.stderr
    assert not (tmp_path / "r").exists()  # nothing was started


def test_unknown_layer_fails_run_with_list_of_layers(tmp_path):
    spec = GOOD.replace('layers: ["5"]', 'layers: ["block.3"]')
    res = _cli("run", str(_spec(tmp_path, spec)), "-o", str(tmp_path / "r"), "-q")
    assert res.returncode in (1, 2)
    assert "unknown layer 'block.3'" in res.stderr and "its layers are: 0, 1, 2" in res.stderr
    assert "--resume" in res.stderr


def test_plugins_json_lists_builtins(capsys):
    assert main(["plugins", "--json"]) == 0
    infos = json.loads(capsys.readouterr().out)
    by_name = {i["name"]: i for i in infos}
    assert by_name["probekit.builtin.models"]["provides"] == {"models": ["module"]}
    assert "probekit_register_probes" in by_name["probekit.builtin.probes"]["hooks"]
    assert by_name["probekit.builtin.datasets"]["provides"]["datasets"] == [
        "digits", "folder", "mnist5k", "photos", "torchvision"]


def test_list_and_schema(capsys):
    assert main(["list", "metrics"]) == 0
    out = capsys.readouterr().out
    for name in ("mse", "psnr", "ssim", "accuracy"):
        assert name in out
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    probe_types = [v["properties"]["type"]["const"] for v in schema["$defs"]["ProbeSpec"]["oneOf"]]
    assert "linear" in probe_types
    assert "layers" in schema["$defs"]["ProbeSpec"]["oneOf"][probe_types.index("linear")]["properties"]


def test_version():
    res = _cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("probekit ")


def test_dry_run_shows_layers_and_cache_estimate(tmp_path, capsys):
    assert main(["run", str(_spec(tmp_path, GOOD)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "digits: 1438 train / 359 test" in out
    assert "estimated feature cache" in out and "5 " in out
    assert not (tmp_path / "runs").exists()


def test_report_and_compare(tmp_path, capsys, digits_spec):
    import probekit

    for seed in (0, 1):
        spec = digits_spec(solver="sgd", epochs=2)
        spec["seed"] = seed
        spec["model"]["train"]["epochs"] = 1
        probekit.run(spec, tmp_path / f"seed{seed}")
    (tmp_path / "seed0" / "report.html").unlink()
    assert main(["report", str(tmp_path / "seed0")]) == 0
    assert (tmp_path / "seed0" / "report.html").exists()
    assert main(["compare", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "-o", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "accuracy.5" in out and "seed0" in out and "seed1" in out
    assert (tmp_path / "cmp.csv").exists() and (tmp_path / "cmp.png").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 2
