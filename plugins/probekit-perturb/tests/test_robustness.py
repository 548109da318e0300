"""The robustness probe end to end with the core's `module` adapter (no other plugin needed)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

import probekit
from probekit.testing import small_cnn_section

REPO = Path(os.environ.get("PROBEKIT_REPO") or Path(__file__).resolve().parents[3])
SHARED = REPO / ".." / "shared" / "data" / "lpips" / "alexnet_features.pth"


def _spec(lpips: bool) -> dict:
    metrics: list = ["mse"]
    if lpips:
        metrics.append({"type": "lpips", "weights": str(SHARED.resolve())})
    return {
        "name": "robustness-test",
        "seed": 0,
        "device": "cpu",
        "model": small_cnn_section(),
        "data": {"type": "digits", "size": 32, "batch_size": 32},
        "probe": {
            "type": "robustness",
            "layers": ["2", "5", "8"],
            "limit": 64,
            "show": 4,
            "perturbations": [
                {"type": "brightness", "factor": 1.0, "name": "identity"},
                {"type": "noise", "std": 0.3},
                {"type": "occlusion", "size": 8, "count": 2},
                {"type": "noise", "std": 0.3, "region": [0.0, 0.0, 0.5, 1.0]},
            ],
            "attribution": {"method": "gradient-x-input", "limit": 8, "n_perturb_samples": 2},
        },
        "metrics": metrics,
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_robustness_run_writes_results_figures_and_resumes(tmp_path):
    lpips = SHARED.is_file()
    run_dir = tmp_path / "run"
    results = probekit.run(_spec(lpips), run_dir)
    text = (run_dir / "results.csv").read_text()
    assert text.splitlines()[0] == "perturbation,layer,metric,value"
    rows = _rows(run_dir / "results.csv")
    labels = ["identity", "noise 0.3", "occlusion size=8 count=2", "noise 0.3 in [0 0 0.5 1]"]
    assert [r["perturbation"] for r in rows[:: len(rows) // 4]] == labels
    per = 4 * 2 + 2 + (2 if lpips else 1) + 2  # (3 layers + output) x (cka, cosine); flips, distance; image; attr
    assert len(rows) == 4 * per
    value = {(r["perturbation"], r["layer"], r["metric"]): float(r["value"]) for r in rows}
    for layer in ("2", "5", "8", "output"):
        assert value[("identity", layer, "cka")] == pytest.approx(1.0, abs=1e-9)
        assert value[("identity", layer, "cosine")] == pytest.approx(1.0, abs=1e-9)
        assert value[("noise 0.3", layer, "cka")] < 0.999
    assert value[("identity", "output", "flip_rate")] == 0.0
    assert value[("identity", "output", "logit_distance")] == 0.0
    assert value[("identity", "input", "mse")] == 0.0
    assert value[("noise 0.3", "input", "mse")] > 0.01
    # noise on the top half only: about half the squared error of noise everywhere
    half = value[("noise 0.3 in [0 0 0.5 1]", "input", "mse")] / value[("noise 0.3", "input", "mse")]
    assert 0.35 < half < 0.65
    assert value[("identity", "input", "infidelity:gradient-x-input")] >= 0.0
    if lpips:
        assert value[("identity", "input", "lpips")] == pytest.approx(0.0, abs=1e-6)
        assert value[("noise 0.3", "input", "lpips")] > 0.05
    assert results["examples"] == 64
    assert results["robustness"]["noise 0.3"]["8"]["cka"] == pytest.approx(value[("noise 0.3", "8", "cka")])
    figures = {p.name for p in (run_dir / "figures").glob("*.png")}
    assert {
        "robustness-cka.png",
        "robustness-cosine.png",
        "robustness-flip_rate.png",
        "robustness-logit_distance.png",
        "robustness-mse.png",
        "perturbations.png",
        "robustness-infidelity-gradient-x-input.png",
    } <= figures
    assert "Robustness to input perturbations" in (run_dir / "report.md").read_text()
    json.loads((run_dir / "metrics.json").read_text())

    # kill after the second perturbation: its checkpoint stays, the later ones and the table are gone
    (run_dir / "checkpoints" / "robustness-2.json").unlink()
    (run_dir / "checkpoints" / "robustness-3.json").unlink()
    (run_dir / "results.csv").unlink()
    probekit.run(_spec(lpips), run_dir, resume=True)
    assert (run_dir / "results.csv").read_text() == text


def test_bad_perturbation_options_are_spec_errors(tmp_path):
    spec = _spec(False)
    spec["probe"]["perturbations"] = [{"type": "noise", "sdt": 0.1}]
    with pytest.raises(probekit.SpecError, match="sdt"):
        probekit.load_spec(spec)
    spec["probe"]["perturbations"] = [{"type": "blur"}]
    with pytest.raises(probekit.SpecError, match="unknown perturbation 'blur'"):
        probekit.load_spec(spec)


def test_unknown_layer_names_the_valid_ones(tmp_path):
    spec = _spec(False)
    spec["probe"]["layers"] = ["conv9"]
    with pytest.raises(Exception, match="unknown layer 'conv9'"):
        probekit.run(spec, tmp_path / "run")
