"""The advice printed after a failed run is a command that works when followed as printed."""

from __future__ import annotations

import shlex
import textwrap

from probekit._cli import main

GOOD = """
name: ok
model: {type: module, factory: "probekit.testing:small_cnn", kwargs: {in_channels: 1, width: 8}}
data: {type: digits, limit: 256, test_limit: 128}
probe: {type: linear, layers: ["5", "9"], C: 1.0}
metrics: [accuracy]
"""


def _spec(folder, text, name="spec.yaml"):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_following_the_advice_after_a_spec_error_mid_run_works(tmp_path, capsys, monkeypatch):
    """A layer the model lacks stops the run (exit 2) after its directory was made; the advice for
    a changed spec (--overwrite) is run as printed, with the spec fixed, and finishes."""
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    path = _spec(tmp_path, GOOD.replace('layers: ["5", "9"]', 'layers: ["5", "99"]'))
    assert main(["run", "spec.yaml", "-o", "runs/r", "-q", "--set", "seed=4"]) == 2
    err = capsys.readouterr().err
    assert "probe.layers[1]: unknown layer '99'" in err
    assert (tmp_path / "runs" / "r").is_dir()  # made before the layers were checked
    command = next(line.strip() for line in err.splitlines() if line.strip().endswith("--overwrite"))
    path.write_text(path.read_text().replace('"99"', '"9"'))  # fix the spec
    argv = shlex.split(command)
    assert argv[0] == "probekit" and "--set" in argv and "seed=4" in argv
    assert main(argv[1:]) == 0
    assert (tmp_path / "runs" / "r" / "metrics.json").exists()
    out = capsys.readouterr().out
    assert out.startswith("done: ") and "accuracy.5=" in out and "report: runs/r/report.html" in out
