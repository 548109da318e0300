"""Distributions: names, version ranges, one version per distribution, and the guard against the other `probekit`.

The PyPI name `probekit` belongs to an unrelated project whose import package is also `probekit`.
These tests fake it (a package folder with its own dist-info, first on PYTHONPATH) and check that the
`probekit` command and every plugin stop with one clear message, without running its code.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import probekit
import probekit_core

REPO = Path(__file__).resolve().parents[1]
PROJECTS = [REPO, *sorted((REPO / "plugins").glob("probekit-*")), REPO / "plugins" / "_template"]
SCRIPT = "import sys; from probekit_core import main; sys.exit(main())"  # what pip's `probekit` script runs
FOREIGN_INIT = 'raise RuntimeError("the other probekit was executed")\n'


def _pyproject(project: Path) -> dict:
    return tomllib.loads((project / "pyproject.toml").read_text())


def _fake_foreign(root: Path, *, with_dist_info: bool = True) -> Path:
    """The unrelated `probekit` 0.4.0 as pip would install it: its package and its dist-info."""
    pkg = root / "probekit"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FOREIGN_INIT)
    if with_dist_info:
        info = root / "probekit-0.4.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: probekit\nVersion: 0.4.0\n")
        digest = base64.urlsafe_b64encode(hashlib.sha256(FOREIGN_INIT.encode()).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(f"probekit/__init__.py,sha256={digest},{len(FOREIGN_INIT)}\n"
                                     "probekit-0.4.0.dist-info/METADATA,,\nprobekit-0.4.0.dist-info/RECORD,,\n")
        (info / "top_level.txt").write_text("probekit\n")
    return root


def _run(args: list[str], pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


# -- names and versions (done-means 2) ------------------------------------------------------------
@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.name if p != REPO else "core")
def test_no_distribution_depends_on_the_other_probekit_and_plugins_use_a_range(project):
    data = _pyproject(project)["project"]
    requirements = [Requirement(r) for r in data.get("dependencies", [])]
    for extra in data.get("optional-dependencies", {}).values():
        requirements += [Requirement(r) for r in extra]
    assert all(canonicalize_name(r.name) != "probekit" for r in requirements), requirements
    if project == REPO:
        assert data["name"] == "probekit-core"
        return
    core = [r for r in requirements if r.name == "probekit-core"]
    assert core, f"{project.name} does not depend on probekit-core"
    for req in core:
        operators = {s.operator for s in req.specifier}
        assert "==" not in operators and ">=" in operators and "<" in operators, str(req)
        assert req.specifier.contains(probekit.__version__), (str(req), probekit.__version__)


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.name if p != REPO else "core")
def test_version_comes_from_the_package_alone(project):
    data = _pyproject(project)
    assert "version" not in data["project"] and data["project"]["dynamic"] == ["version"]
    attr = data["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, _, name = attr.rpartition(".")
    source = project / "src" / Path(*module.split("."))
    source = source.with_suffix(".py") if source.with_suffix(".py").exists() else source / "__init__.py"
    namespace: dict = {}
    line = next(x for x in source.read_text().splitlines() if x.startswith(f"{name} = "))
    exec(line, namespace)  # the one assignment setuptools reads statically
    # the installed (editable) metadata agrees, where this checkout is installed
    try:
        installed = metadata.version(data["project"]["name"])
    except metadata.PackageNotFoundError:
        pytest.skip(f"{data['project']['name']} is not installed here")
    assert installed == namespace[name]


def test_core_version_is_the_package_version():
    assert metadata.version("probekit-core") == probekit.__version__


# -- the guard (done-means 3) ----------------------------------------------------------------------
def test_our_probekit_passes_the_check():
    probekit_core.check()  # imported: the marker attribute
    assert probekit.__distribution__ == "probekit-core"
    origin = probekit_core._origin(None)
    assert origin is not None and probekit_core._is_ours(origin)  # not imported: the marker line


@pytest.mark.parametrize("how", ["installed", "folder"])
def test_probekit_command_stops_on_the_other_probekit(tmp_path, how):
    root = _fake_foreign(tmp_path / "site", with_dist_info=how == "installed")
    res = _run([sys.executable, "-c", SCRIPT, "--help"], root, tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout == ""
    message = res.stderr.strip()
    assert "Traceback" not in message and "the other probekit was executed" not in message
    assert message.count("\n") == 0, message
    assert message.startswith("error: the 'probekit' package that Python imports")
    assert str(root / "probekit") in message and "is not probekit-core's" in message
    if how == "installed":
        assert "the distribution 'probekit 0.4.0'" in message
        assert "pip uninstall probekit, then pip install --force-reinstall probekit-core" in message
    else:
        assert f"take {root} off PYTHONPATH" in message


def test_installed_probekit_script_stops_on_the_other_probekit(tmp_path):
    script = Path(sys.executable).with_name("probekit")
    if not script.exists():
        pytest.skip("no probekit script beside this interpreter")
    assert "probekit_core" in script.read_text()  # pip wrote it from the core's entry point
    root = _fake_foreign(tmp_path / "site")
    res = _run([str(script), "--help"], root, tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "the distribution 'probekit 0.4.0'" in res.stderr


PLUGIN_MODULES = sorted({ep.value.partition(":")[0].split(".")[0] for ep in metadata.entry_points(group="probekit")})


@pytest.mark.parametrize("module", PLUGIN_MODULES)
def test_every_plugin_stops_on_the_other_probekit(tmp_path, module):
    root = _fake_foreign(tmp_path / "site")
    res = _run([sys.executable, "-c", f"import {module}"], root, tmp_path)
    assert res.returncode == 1
    assert "probekit_core.ForeignProbekitError: the 'probekit' package that Python imports" in res.stderr
    assert "the other probekit was executed" not in res.stderr


def test_no_probekit_at_all_names_the_reinstall(tmp_path, monkeypatch):
    monkeypatch.setattr(probekit_core, "_origin", lambda module: None)
    monkeypatch.delitem(sys.modules, "probekit")
    with pytest.raises(probekit_core.ForeignProbekitError, match="pip install --force-reinstall probekit-core"):
        probekit_core.check()


def test_help_checks_without_importing_probekit_heavily():
    code = ("import sys\nfrom probekit_core import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'pydantic', 'yaml') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"
