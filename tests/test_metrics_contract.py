"""Metrics are a contract: a probe declares what it computes and which of the spec's `metrics:` it uses."""

import os
import subprocess
import sys

import pytest
import yaml

import probekit
from probekit import SpecError


def test_a_metric_the_probe_does_not_use_is_refused_with_the_accepted_ones(digits_spec):
    spec = digits_spec()
    spec["metrics"] = ["accuracy", "psnr"]
    with pytest.raises(SpecError) as err:
        probekit.load_spec(spec)
    assert err.value.path == "metrics[1]"
    assert "probe 'linear' does not use metric 'psnr' (it computes accuracy itself)" in str(err.value)
    assert "Metrics probe 'linear' accepts: accuracy." in str(err.value)


def test_cli_exits_2_naming_the_accepted_metrics(tmp_path, digits_spec):
    """Done-means 4."""
    spec = digits_spec()
    spec["metrics"] = ["psnr", "ssim"]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = subprocess.run([sys.executable, "-m", "probekit", "run", str(path), "-o", str(tmp_path / "r")],
                         capture_output=True, text=True, env={**os.environ})
    assert res.returncode == 2, res.stderr
    assert "metrics[0]" in res.stderr and "accepts: accuracy" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "r").exists()


def test_every_registered_probe_declares_its_metrics():
    pm = probekit.get_plugin_manager()
    for name in pm.names("probes"):
        meta = pm.get("probes", name).meta
        assert isinstance(meta.get("computes"), list) and meta["computes"], name
        assert isinstance(meta.get("accepts_metrics"), list), name
    for name in pm.names("metrics"):
        assert pm.get("metrics", name).meta.get("kind"), name


def test_metric_kinds_are_accepted_by_kind():
    from probekit._spec import accepted_metrics

    pm = probekit.get_plugin_manager()
    if "inversion" not in pm.names("probes"):
        pytest.skip("probekit-inversion is not installed")
    accepted = accepted_metrics("inversion")
    assert {"mse", "psnr", "ssim"} <= set(accepted) and "accuracy" not in accepted
