"""What the CLI says is true and usable: a closed pipe, did-you-mean at every depth, list in the
singular and plural and all, paths relative to the current directory, an empty spec, validate
--deep and the final summary line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from probekit._cli import main

GOOD = """
name: ok
model: {type: module, factory: "probekit.testing:small_cnn", kwargs: {in_channels: 1, width: 8}}
data: {type: digits, limit: 256, test_limit: 128}
probe: {type: linear, layers: ["5", "9"]}
metrics: [accuracy]
"""


def _spec(folder, text, name="spec.yaml"):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_closed_pipe_ends_quietly():
    # `probekit schema | head`: the reader closes the pipe before probekit has written its output
    proc = subprocess.Popen([sys.executable, "-m", "probekit", "schema"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141  # as a program killed by SIGPIPE
    assert err == "", err


@pytest.mark.parametrize("text,path,suggestion", [
    (GOOD.replace("width: 8}}", "width: 8}, train: {epocs: 3}}"), "model.train.epocs", "epochs"),
    (GOOD.replace("limit: 256,", "limt: 256,"), "data.limt", "limit"),
    (GOOD.replace('layers: ["5", "9"]', 'layers: ["5", "9"], epoch: 3'), "probe.epoch", "epochs"),
    (GOOD.replace("width: 8}}", "width: 8}, train: {epochs: 1, data: {type: digits, sise: 8}}}"),
     "model.train.data.sise", "size"),
    (GOOD.replace("name: ok", "name: ok\nsed: 3"), "sed", "seed"),
])
def test_did_you_mean_at_every_depth(tmp_path, capsys, text, path, suggestion):
    assert main(["validate", str(_spec(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert f"{path}: unknown key" in err and f"Did you mean '{suggestion}'?" in err, err
    assert "Valid keys:" in err


@pytest.mark.parametrize("kind", ["model", "models", "metric", "metrics", "probe", "dataset", "perturbation"])
def test_list_singular_and_plural(capsys, kind):
    assert main(["list", kind]) == 0
    given = capsys.readouterr().out
    assert main(["list", kind if kind.endswith("s") else kind + "s"]) == 0
    assert given == capsys.readouterr().out and given.strip()


def test_list_all(capsys):
    import json

    assert main(["list", "all"]) == 0
    out = capsys.readouterr().out
    for kind in ("models:", "probes:", "metrics:", "datasets:", "perturbations:"):
        assert f"\n{kind}\n" in f"\n{out}"
    assert "  linear " in out and "  accuracy " in out and "  digits " in out
    assert main(["list", "all", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert set(listed) == {"models", "probes", "metrics", "datasets", "perturbations"}
    assert "module" in [e["name"] for e in listed["models"]]


def test_paths_in_messages_are_relative_to_the_current_directory(tmp_path, capsys, monkeypatch):
    sub = tmp_path / "specs"
    sub.mkdir()
    bad = _spec(sub, GOOD.replace("type: linear", "type: linaer"))
    monkeypatch.chdir(tmp_path)
    for given in (str(bad), "specs/spec.yaml"):  # absolute under the current directory, and relative
        assert main(["validate", given]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: specs/spec.yaml: probe.type: unknown probe 'linaer'"), err
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere.yaml"  # outside: stays absolute
    elsewhere.write_text(GOOD.replace("type: linear", "type: linaer"))
    try:
        assert main(["validate", str(elsewhere)]) == 2
        assert capsys.readouterr().err.startswith(f"error: {elsewhere}: ")
    finally:
        elsewhere.unlink()


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n"])
def test_an_empty_spec_file_is_reported_as_empty(tmp_path, capsys, content):
    path = tmp_path / "spec.yaml"
    path.write_text(content)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the file is empty" in err and "required key" not in err, err


def test_validate_deep_checks_layers(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    path = _spec(tmp_path, GOOD.replace('layers: ["5", "9"]', 'layers: ["5", "99"]'))
    assert main(["validate", str(path)]) == 0  # without --deep the model is not built
    capsys.readouterr()
    assert main(["validate", str(path), "--deep"]) == 2
    err = capsys.readouterr().err
    assert "probe.layers[1]: unknown layer '99'" in err and "its layers are: 0, 1, 2, 3" in err
    assert main(["validate", str(path), "--deep", "--set", 'probe.layers=["5", "9"]']) == 0
    out = capsys.readouterr().out
    assert "layers probed:" in out and "\n    5 " in out and "\n    9 " in out
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.safetensors"))


def test_the_summary_line_drops_whole_entries():
    from probekit._report import summary_line

    results = {"accuracy": {str(i): 0.1 + i / 1000 for i in range(60)}, "best_layer": "5"}
    line = summary_line(results, limit=300, more=" in metrics.json")
    assert len(line) <= 300
    entries = line.split(", ")
    assert entries[-1].startswith("and ") and entries[-1].endswith(" more in metrics.json")
    shown = entries[:-1]
    assert shown[:3] == ["accuracy.0=0.1", "accuracy.1=0.101", "accuracy.2=0.102"]  # natural order
    for entry in shown:  # every entry whole: key=number
        key, value = entry.split("=")
        assert float(value) == round(0.1 + int(key.split(".")[1]) / 1000, 4)
    assert int(entries[-1].split()[1]) == 60 - len(shown)
    assert summary_line({"a": 0.5}) == "a=0.5"
