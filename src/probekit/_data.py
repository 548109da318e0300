"""Dataset sources: what a `data:` section of a spec builds."""

from __future__ import annotations

from collections.abc import Mapping, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from probekit._context import RunContext


@dataclass
class DataInfo:
    """Metadata of a dataset: classes and image shape (C, H, W)."""

    name: str
    image_shape: tuple[int, int, int]
    classes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class DataBundle:
    """Train and test datasets of `(image, label)` pairs plus metadata.

    Images are float tensors in [0, 1], CHW, RGB (or one channel).
    """

    train: Dataset
    test: Dataset
    info: DataInfo


class TensorImageDataset(Dataset):
    """`(image, label)` pairs from an image tensor (NCHW, [0, 1]) and a label tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        self.images = images
        self.labels = labels if labels is not None else torch.zeros(len(images), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


def num_examples(dataset: Dataset) -> int:
    """The length of a map-style dataset (`len(dataset)`).

    Datasets in a `DataBundle` have a length; torch's `Dataset` type does not declare `__len__`, so a
    type checker refuses `len()` on one: this function states the requirement once.

    Raises:
        TypeError: the dataset has no `__len__` (an iterable-style dataset).
    """
    if not isinstance(dataset, Sized):
        raise TypeError(f"{type(dataset).__name__} has no length: probekit needs map-style datasets "
                        "(with __len__ and __getitem__)")
    return len(dataset)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma (N, 1, H, W) of RGB images (N, 3, H, W), the weights of PIL's `convert('L')`."""
    return 0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]


#: The fewest examples a run trains on (one cannot standardise or fit a classifier to one) and tests on.
MIN_TRAIN, MIN_TEST = 2, 1


#: Part of every cache key that depends on the data: bumped when the rows a split holds, or their order, change
#: (`shuffled`: since splits stopped being sorted back into the source's order).
SPLIT_VERSION = "shuffled"


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic shuffled train/test split of `range(n)`, each part in shuffled order.

    The order is kept shuffled (not sorted back) because `data.limit` / `test_limit` take the first rows:
    sources stored by class (mnist5k holds 500 of each digit in turn) would otherwise give subsets of a
    few classes only.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_test = max(1, int(round(n * test_fraction)))
    return perm[n_test:], perm[:n_test]


def build_data(run: RunContext, section: Any = None, options: Mapping[str, Any] | None = None) -> DataBundle:
    """The dataset of a data section with `limit` / `test_limit` applied."""
    from torch.utils.data import Subset

    from probekit._registry import create_dataset

    section = section or run.spec.data
    opts = dict(options if options is not None else run.options["data"])
    bundle = create_dataset(section.type, seed=run.data_seed, **opts)
    train, test = bundle.train, bundle.test
    if section.limit is not None and len(train) > section.limit:
        train = Subset(train, range(section.limit))
    if section.test_limit is not None and len(test) > section.test_limit:
        test = Subset(test, range(section.test_limit))
    where = "model.train.data" if section is not run.spec.data else "data"
    for split, part, least in (("training", train, MIN_TRAIN), ("test", test, MIN_TEST)):
        if len(part) < least:
            from probekit._errors import SpecError

            raise SpecError(f"the data has {len(part)} {split} example{'s' * (len(part) != 1)}; at least {least} "
                            f"are needed", path=where,
                            fix="Give more images, or change test_fraction / limit / test_limit.")
    return DataBundle(train, test, bundle.info)
