"""Colour-robustness analysis: hue maths, masks, exact inverses keep the whole change, missing-plugin error."""

from __future__ import annotations

import colorsys
import csv
import json

import numpy as np
import pytest
import torch
from inversion_helpers import TestModels
from PIL import Image
from probekit_inversion.analyses import colour_masks, hue_distance
from probekit_inversion.options import ColourOptions
from probekit_inversion.probe import InversionProbe
from test_probe import _exact_fit

import probekit
from probekit import SpecError, rgb_to_hsv


def test_rgb_to_hsv_matches_colorsys():
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    hsv = rgb_to_hsv(x)
    for n, i, j in [(0, 0, 0), (1, 4, 6), (0, 2, 3), (1, 1, 5)]:
        ref = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
        assert hsv[n, :, i, j].tolist() == pytest.approx(ref, abs=1e-6)


def test_hue_distance_wraps_around():
    d = hue_distance(torch.tensor([0.95, 0.1, 0.0]), torch.tensor([0.05, 0.6, 0.5]))
    assert d.tolist() == pytest.approx([36.0, 180.0, 180.0], abs=1e-4)


def _spec(**colour):
    return {
        "name": "colour",
        "device": "cpu",
        "model": {"type": "invertible", "channels": 3, "size": 8},
        "data": {"type": "photos", "size": 8, "n": 30, "batch_size": 8},
        "probe": {
            "type": "inversion",
            "layers": ["lin1", "act"],
            "analyses": ["colour"],
            "colour": {"images": 5, "perturbations": ["hue-set:red", "hue-rotate:120", "grayscale"], **colour},
        },
    }


def test_exact_inverses_keep_the_whole_colour_change(tmp_path, test_models, monkeypatch):
    pytest.importorskip("probekit_perturb")
    from probekit import get_plugin_manager

    if "hue-set" not in get_plugin_manager().names("perturbations"):
        pytest.skip("probekit-perturb does not register hue-set")
    monkeypatch.setattr(InversionProbe, "fit", _exact_fit)
    results = probekit.run(_spec(), tmp_path / "run")
    with open(tmp_path / "run" / "results_colour.csv") as f:
        rows = list(csv.DictReader(f))
    value = {(r["perturbation"], r["layer"], r["metric"]): float(r["value"]) for r in rows}
    for p in ("hue-set:red", "hue-rotate:120", "grayscale"):
        for layer in ("lin1", "act"):
            assert value[(p, layer, "change_kept")] == pytest.approx(1.0, abs=1e-4)
            assert value[(p, layer, "saturation_error")] < 1e-3
            if p != "grayscale":
                assert value[(p, layer, "hue_error")] < 0.5
                assert value[(p, layer, "hue_error_to_original")] > 5  # the colour really changed
        assert 0 <= value[(p, "model", "prediction_changed")] <= 1
        assert results["colour"][p]["lin1"] == pytest.approx(1.0, abs=1e-4)
    assert (tmp_path / "run" / "figures" / "colour_vs_depth.png").exists()
    assert (tmp_path / "run" / "figures" / "colour_reconstructions.png").exists()
    json.loads((tmp_path / "run" / "metrics.json").read_text())  # strict JSON (no NaN)


def test_missing_perturbation_plugin_is_a_clear_error(tmp_path, monkeypatch):
    import probekit_inversion

    from probekit.testing import isolated_plugins

    # the core's built-ins only: no perturbations
    isolated_plugins(monkeypatch, {"inversion": probekit_inversion, "test-models": TestModels()})
    with pytest.raises(SpecError, match="probekit-perturb") as err:
        probekit.run(_spec(), tmp_path / "run")
    assert "pip install probekit-perturb" in str(err.value)
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))  # failed before any training


def test_box_and_data_masks():
    from probekit import TensorImageDataset

    images = torch.rand(3, 3, 10, 20)
    box = ColourOptions(box=(0.5, 0.0, 1.0, 0.5))
    _, masks, source = colour_masks(TensorImageDataset(images), box, 2)
    assert source == "box" and masks.shape == (2, 1, 10, 20)
    assert masks[0, 0, :5, 10:].all() and masks[0].sum() == 50

    class Masked(TensorImageDataset):
        masks = torch.zeros(3, 1, 10, 20, dtype=torch.bool)

    Masked.masks[1, 0, 2:4, 2:4] = True  # only image 1 has a non-empty mask
    imgs, masks, source = colour_masks(Masked(images), ColourOptions(), 5)
    assert source == "data" and len(imgs) == 1 and torch.equal(imgs[0], images[1]) and masks.sum() == 4


def test_coco_instance_masks(tmp_path):
    pytest.importorskip("pycocotools")
    from torch.utils.data import Subset

    from probekit import FolderDataset

    files = []
    for i in range(2):
        path = tmp_path / f"{i:012d}.jpg"
        Image.fromarray(np.full((40, 80, 3), 128, dtype=np.uint8)).save(path)
        files.append(path)
    ann = {
        "images": [
            {"id": 7, "file_name": files[1].name, "height": 40, "width": 80},
            {"id": 8, "file_name": files[0].name, "height": 40, "width": 80},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            # a cat: the rectangle x 40..80, y 0..20 as a polygon
            {
                "id": 1,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 0,
                "area": 800,
                "bbox": [40, 0, 40, 20],
                "segmentation": [[40, 0, 80, 0, 80, 20, 40, 20]],
            },
            {
                "id": 2,
                "image_id": 8,
                "category_id": 2,
                "iscrowd": 0,
                "area": 100,
                "bbox": [0, 0, 10, 10],
                "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]],
            },
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(ann))
    data = Subset(FolderDataset(files, [0, 0], size=20, channels=3), [0, 1])
    opts = ColourOptions(coco_annotations=str(tmp_path / "instances.json"), category="cat")
    imgs, masks, source = colour_masks(data, opts, 10)
    assert source == "coco" and len(imgs) == 1  # image 0 has only a dog
    m = masks[0, 0]  # the 40x80 mask resized to the 20x20 image
    assert m[:10, 10:].float().mean() > 0.9 and m[10:, :].sum() == 0 and m[:, :10].sum() == 0
    with pytest.raises(SpecError, match="no COCO category 'bird'"):
        colour_masks(
            data, ColourOptions(coco_annotations=str(tmp_path / "instances.json"), category="bird"), 10
        )
