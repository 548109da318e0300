import torch

import probekit


def test_metric_and_probe_through_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    from probekit import get_plugin_manager
    from probekit.testing import reset_plugin_manager

    reset_plugin_manager()  # discover the installed plugin through its entry point
    assert get_plugin_manager().get("metrics", "mae").provider == "template"
    mae = probekit.create_metric("mae")
    mae.update(torch.zeros(2, 3), torch.ones(2, 3))
    mae.update(torch.zeros(1, 3), torch.full((1, 3), 4.0))
    assert mae.compute() == (6 + 12) / 9

    results = probekit.run({
        "name": "norms", "device": "cpu",
        "model": {"type": "module", "factory": "probekit.testing:mlp", "kwargs": {"in_features": 64}},
        "data": {"type": "digits", "test_limit": 50},
        "probe": {"type": "norms", "layers": ["0", "2"]},
    }, tmp_path / "run")
    images = torch.stack([probekit.create_dataset("digits").test[i][0] for i in range(50)])
    assert abs(results["norm"]["0"] - float(images.flatten(1).norm(dim=1).mean())) < 1e-4
    assert (tmp_path / "run" / "results.csv").read_text().startswith("layer,metric,value")
    reset_plugin_manager()
