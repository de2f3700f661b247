"""CIFAR-10 and CIFAR-100 from the "python version" pickles, from a folder the user gives.

CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extracted): ``root`` holds
``cifar-10-batches-py/`` or the files directly: ``data_batch_1`` .. ``data_batch_5`` ("train",
50 000) and ``test_batch`` ("test", 10 000). Each is a pickled dict with ``data`` uint8
(n, 3072) — the red, green and blue 32 x 32 planes of each image in turn — and ``labels`` (n,)
in 0..9.

CIFAR-100 (cifar-100-python.tar.gz): ``root`` holds ``cifar-100-python/`` or ``train`` (50 000) and
``test`` (10 000) directly, with ``fine_labels`` in 0..99 (the 100 classes we train on).

Training augmentation (``augment=True``): random 32 x 32 crop of the image zero-padded by 4 pixels
per side, then a horizontal flip with probability 1/2 — vectorized in ``ds.batch``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .files import DatasetNotFoundError, load_pickle
from .inmemory import InMemoryDataset
from .transforms import MEAN_STD

__all__ = ["SPLITS", "load_cifar10", "load_cifar100", "read_batch"]

SPLITS = ("train", "test")
_LAYOUT = {
    # name: (sub-folder, {split: files}, label key, classes, how to get it)
    "cifar10": (
        "cifar-10-batches-py",
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "labels",
        10,
        "download the CIFAR-10 python version (cifar-10-python.tar.gz), extract it "
        "and pass --data.root DIR",
    ),
    "cifar100": (
        "cifar-100-python",
        {"train": ["train"], "test": ["test"]},
        "fine_labels",
        100,
        "download the CIFAR-100 python version (cifar-100-python.tar.gz), extract it "
        "and pass --data.root DIR",
    ),
}


def read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch file -> (uint8 (n, 3, 32, 32), int64 (n,)); a bad file is a ValueError."""
    with open(path, "rb") as f:
        content = load_pickle(f, path)
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    # Python 2 pickles decode keys as str (latin1); Python 3 ones may use bytes keys.
    content = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in content.items()}
    if "data" not in content or label_key not in content:
        raise ValueError(f"{path}: expected keys 'data' and {label_key!r}, got {sorted(content)}")
    data = np.asarray(content["data"])
    labels = np.asarray(content[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be uint8 (n, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: {label_key!r} must be {data.shape[0]} integers, "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: {label_key!r} outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _folder(name: str, root: str | Path | None, first_file: str) -> Path:
    subfolder, _, _, _, how = _LAYOUT[name]
    if root is None:
        raise DatasetNotFoundError(f"{name}: no root given (CIFAR is never bundled); {how}")
    base = Path(root).expanduser()
    for folder in (base / subfolder, base):
        if (folder / first_file).is_file():
            return folder
    raise DatasetNotFoundError(
        f"{name}: {first_file} not found in {base / subfolder} or {base}; {how}"
    )


def _load(
    name: str, split: str, root: str | Path | None, augment: bool, image_size: int | None
) -> InMemoryDataset:
    _, files, label_key, num_classes, how = _LAYOUT[name]
    folder = _folder(name, root, files[split][0])
    parts = []
    for file in files[split]:
        if not (folder / file).is_file():
            raise DatasetNotFoundError(f"{name}: {folder / file} not found; {how}")
        parts.append(read_batch(folder / file, label_key, num_classes))
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))  # (n, 3, 32, 32) uint8
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))  # (n,) int64
    mean, std = MEAN_STD[name]
    return InMemoryDataset(
        name,
        split,
        images,
        labels,
        num_classes,
        mean,
        std,
        augment=augment,
        pad_crop=4,
        hflip=True,
        image_size=image_size,
    )


def load_cifar10(
    split: str,
    root: str | Path | None = None,
    *,
    augment: bool = False,
    image_size: int | None = None,
) -> InMemoryDataset:
    """CIFAR-10 ``split`` ("train" 50k, "test" 10k) from ``root``; normalized with the training
    set's per-channel mean (0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616)."""
    return _load("cifar10", split, root, augment, image_size)


def load_cifar100(
    split: str,
    root: str | Path | None = None,
    *,
    augment: bool = False,
    image_size: int | None = None,
) -> InMemoryDataset:
    """CIFAR-100 ``split`` ("train" 50k, "test" 10k, fine labels) from ``root``; normalized with
    mean (0.5071, 0.4865, 0.4409) and std (0.2673, 0.2564, 0.2762)."""
    return _load("cifar100", split, root, augment, image_size)
