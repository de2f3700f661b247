"""Fashion-MNIST from IDX files, by default those of Debian's ``dataset-fashion-mnist`` package.

``apt-get install dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist/`` with
``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``. Splits: "train" 60 000, "test" 10 000, and a
deterministic hold-out carved from the training file: "val" = training images 50 000..59 999 and
"train-50k" = training images 0..49 999 (disjoint from "val"; note "train" contains "val").

IDX format (big-endian): two zero bytes, a type byte (0x08 = unsigned byte), a byte with the number
of dimensions d, d uint32 sizes, then the data in C order.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from .files import DatasetNotFoundError, read_gzip
from .inmemory import InMemoryDataset
from .transforms import MEAN_STD

__all__ = ["CLASSES", "DEFAULT_ROOT", "SPLITS", "load", "parse_idx", "read_idx"]

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "test", "val", "train-50k")
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {"train": "train", "test": "t10k"}
_GET = "apt-get install dataset-fashion-mnist, or pass root=DIR holding the IDX files"


def parse_idx(data: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Decode IDX unsigned-byte content into a uint8 array of the header's shape."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: bad IDX magic {data[:4].hex()}, expected 0000 08 0d")
    if data[2] != 0x08:
        raise ValueError(f"{path}: IDX type byte 0x{data[2]:02x} is not 0x08 (unsigned byte)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(data)} bytes, {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(
            f"{path}: IDX of shape {shape} should be {expected} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """`parse_idx` of a ``.gz`` (decompressed) or raw IDX file."""
    data = read_gzip(path) if path.suffix == ".gz" else path.read_bytes()
    return parse_idx(data, path)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetNotFoundError(f"fashion_mnist: {root / stem}[.gz] not found; {_GET}")


def _read(root: Path, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_path = _find(root, f"{which}-images-idx3-ubyte")
    labels_path = _find(root, f"{which}-labels-idx1-ubyte")
    stamps = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in (images_path, labels_path))
    return _decode(images_path, labels_path, stamps)


@functools.lru_cache(maxsize=4)
def _decode(
    images_path: Path, labels_path: Path, stamps: tuple[tuple[int, int], ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 1, 28, 28) and int64 (n,); cached per file version (``stamps``)."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected (n, 28, 28) images, got {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"{labels_path}: {labels.shape} labels for {images.shape[0]} images")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels outside 0..9 (max {labels.max()})")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # (n, 1, 28, 28) uint8
    return x, torch.from_numpy(labels.astype(np.int64))


def load(
    split: str,
    root: str | Path | None = None,
    *,
    augment: bool = False,
    image_size: int | None = None,
) -> InMemoryDataset:
    """Fashion-MNIST ``split`` from ``root`` (default /usr/share/datasets/fashion-mnist). Pixels are
    ``byte / 255`` normalized with mean 0.2860, std 0.3530; ``augment`` adds nothing."""
    base = DEFAULT_ROOT if root is None else Path(root).expanduser()
    if not base.is_dir():
        raise DatasetNotFoundError(f"fashion_mnist: directory {base} not found; {_GET}")
    images, labels = _read(base.resolve(), _FILES.get(split, "train"))
    if split in ("val", "train-50k"):
        if images.shape[0] <= 10_000:
            raise ValueError(
                f"fashion_mnist: split {split!r} needs more than 10000 training "
                f"images, {base} has {images.shape[0]}"
            )
        cut = images.shape[0] - 10_000
        part = slice(cut, None) if split == "val" else slice(None, cut)
        images, labels = images[part], labels[part]
    mean, std = MEAN_STD["fashion_mnist"]
    return InMemoryDataset(
        "fashion_mnist",
        split,
        images,
        labels,
        10,
        mean,
        std,
        augment=augment,
        image_size=image_size,
    )
