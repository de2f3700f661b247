"""``InMemoryDataset``: a whole split held as uint8 images and int64 labels, with the fast,
vectorized ``batch(indices, generator=)`` (gather, augmentation, resize, normalization) that
`Batches` uses. MNIST, Fashion-MNIST and CIFAR load into it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from . import transforms

__all__ = ["InMemoryDataset"]


class InMemoryDataset(Dataset):
    """A whole split held as ``images`` uint8 (N, C, H, W) and ``labels`` int64 (N,).

    ``batch(indices, generator=)`` is the fast path: one gather, the vectorized augmentation when
    ``augment`` is set (random crop from a zero-padded image with ``pad_crop`` pixels per side, and
    a horizontal flip with probability 1/2 when ``hflip``), an optional bilinear resize to
    ``image_size``, then ``(x / 255 - mean) / std`` in float32. ``ds[i]`` is ``batch([i])`` with
    torch's global RNG; use ``batch`` or `Batches` for reproducible augmentation.
    """

    def __init__(
        self,
        name: str,
        split: str,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        augment: bool = False,
        pad_crop: int = 0,
        hflip: bool = False,
        image_size: int | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"{name}: images must be uint8 (N, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"{name}: {images.shape[0]} images but labels of shape {tuple(labels.shape)}"
            )
        native = images.shape[-1]
        if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        self.name, self.split = name, split
        self.images = images  # (N, C, H, W) uint8
        self.labels = labels.to(torch.int64)  # (N,) int64
        self.num_classes = num_classes
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = bool(augment)
        self.pad_crop, self.hflip = pad_crop, hflip
        self.image_size = native if image_size is None else image_size
        self.input_shape = (images.shape[1], self.image_size, self.image_size)

    @property
    def augmentation(self) -> str:
        """The training augmentation this data set applies when ``augment=True``, in words."""
        parts = [f"random-crop(pad={self.pad_crop})"] if self.pad_crop else []
        parts += ["hflip"] if self.hflip else []
        return "+".join(parts) or "none"

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch(torch.tensor([index]))
        return x[0], int(y[0])

    def batch(
        self, indices: torch.Tensor | Sequence[int], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: x float32 (B, C, H, W) normalized, y int64 (B,). Draws only from
        ``generator`` (torch's global RNG when None), and only when ``augment`` is set."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if idx.ndim != 1:
            raise ValueError(
                f"{self.name}.batch: indices must be 1-D, got shape {tuple(idx.shape)}"
            )
        x = self.images[idx]  # (B, C, H, W) uint8
        if self.augment and (self.pad_crop or self.hflip):
            x = transforms.random_crop_flip(x, self.pad_crop, self.hflip, generator=generator)
        x = x.to(torch.float32).div_(255.0)
        if self.image_size != x.shape[-1]:
            x = transforms.resize_batch(x, self.image_size)
        return transforms.normalize(x, self.mean, self.std, inplace=True), self.labels[idx]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"input_shape={self.input_shape}, augment={self.augment})"
        )
