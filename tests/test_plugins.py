import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import probekit
from probekit import hookimpl, hookspecs
from probekit._errors import UnknownTypeError

REPO = Path(__file__).resolve().parents[1]


class ProbePlugin:
    @hookimpl
    def probekit_register_metrics(self, register):
        register("always-one", "probekit.testing:mlp", description="test metric")


def test_register_and_unregister_a_plugin(pm):
    plugin = ProbePlugin()
    pm.register(plugin, name="test-plugin")
    assert "always-one" in pm.names("metrics")
    entry = pm.get("metrics", "always-one")
    assert entry.provider == "test-plugin" and entry.description == "test metric"
    info = {i.name: i for i in pm.plugin_infos()}["test-plugin"]
    assert info.hooks == ["probekit_register_metrics"] and info.provides == {"metrics": ["always-one"]}
    pm.unregister(name="test-plugin")
    assert "always-one" not in pm.names("metrics")
    with pytest.raises(UnknownTypeError, match="unknown metric 'always-one'"):
        pm.get("metrics", "always-one")


def test_two_providers_of_one_name_leave_the_second_broken_naming_both(pm):
    class Dup:
        @hookimpl
        def probekit_register_models(self, register):
            register("module", "x:y")

    pm.register(Dup(), name="dup-plugin")
    assert "module" in pm.names("models")
    assert pm.get("models", "module").provider == "probekit.builtin.models"
    error = next(i.error for i in pm.plugin_infos() if i.name == "dup-plugin")
    assert "probekit.builtin.models" in error and "dup-plugin" in error


def test_lifecycle_hooks_are_called(pm, tmp_path, digits_spec):
    calls = []

    class Observer:
        @hookimpl
        def probekit_run_started(self, run):
            calls.append(("started", run.spec.name, run.run_dir.exists()))

        @hookimpl
        def probekit_run_finished(self, run, results):
            calls.append(("finished", sorted(results)))

    pm.register(Observer(), name="observer")
    spec = digits_spec(solver="sgd", epochs=1)
    spec["model"]["train"]["epochs"] = 1
    probekit.run(spec, tmp_path / "r")
    assert calls[0] == ("started", "t", True)
    assert calls[1][0] == "finished" and "accuracy" in calls[1][1]


def _fake_dist(root: Path, name: str, module: str, code: str) -> None:
    (root / f"{module}.py").write_text(code)
    info = root / f"{name}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[probekit]\n{name} = {module}\n")


def _plugins_json(extra_path: Path, **env):
    out = subprocess.run([sys.executable, "-m", "probekit", "plugins", "--json"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(extra_path), **env})
    return out.returncode, (json.loads(out.stdout) if out.stdout.strip() else None), out.stderr


def test_broken_plugin_is_listed_with_its_error_and_the_rest_works(tmp_path):
    _fake_dist(tmp_path, "brokenplug", "brokenplug_mod", "raise ImportError('needs libfoo 9')\n")
    _fake_dist(tmp_path, "goodplug", "goodplug_mod",
               "from probekit import hookimpl\n\n@hookimpl\ndef probekit_register_datasets(register):\n"
               "    register('good-data', 'probekit.builtin._datasets:digits', description='ok')\n")
    code, infos, err = _plugins_json(tmp_path)
    assert code == 0, err
    by_name = {i["name"]: i for i in infos}
    assert "needs libfoo 9" in by_name["brokenplug"]["error"]
    assert by_name["goodplug"]["provides"] == {"datasets": ["good-data"]} and by_name["goodplug"]["version"] == "0.3"
    code, infos, _ = _plugins_json(tmp_path, PROBEKIT_LOAD_PLUGINS="goodplug")
    assert {i["name"] for i in infos if not i["builtin"]} == {"goodplug"}
    code, infos, _ = _plugins_json(tmp_path, PROBEKIT_LOAD_PLUGINS="")
    assert all(i["builtin"] for i in infos)


def test_template_plugin_installs_and_is_discovered(tmp_path):
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(REPO / "plugins" / "_template")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    code, infos, err = _plugins_json(target)
    assert code == 0, err
    by_name = {i["name"]: i for i in infos}
    assert by_name["template"]["provides"] == {"metrics": ["mae"], "probes": ["norms"]}
    assert by_name["template"]["hooks"] == ["probekit_register_metrics", "probekit_register_probes"]
    assert by_name["template"]["version"] == "0.1.0"


def test_every_hookspec_is_typed_and_documented():
    docs = "\n".join(p.read_text() for p in (REPO / "docs").rglob("*.md"))
    specs = [n for n, f in vars(hookspecs).items() if n.startswith("probekit_") and callable(f)]
    assert len(specs) >= 9
    for name in specs:
        fn = getattr(hookspecs, name)
        assert fn.__doc__ and len(fn.__doc__.strip()) > 20, f"{name} has no docstring"
        sig = inspect.signature(fn)
        assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), name
        assert f"`{name}" in docs, f"hook {name} is not documented in docs/"
