"""Image transforms with PIL and torch only (torchvision is optional and never imported).

Two kinds:

* batch transforms on uint8 / float tensors (N, C, H, W) for the in-memory data sets — vectorized,
  one gather per batch (`random_crop_flip`, `resize_batch`, `normalize`);
* per-image PIL transforms for ImageFolder trees (`ImageNetTrain`, `ImageNetEval`), the usual
  ImageNet recipe, drawing every random number from an explicit ``torch.Generator``. With the same
  seed, `random_resized_crop_params` draws exactly what torchvision's
  ``RandomResizedCrop.get_params`` draws from the global RNG (tests/test_data.py checks this).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "MEAN_STD",
    "ImageNetEval",
    "ImageNetTrain",
    "center_crop",
    "normalize",
    "pil_to_tensor",
    "random_crop_flip",
    "random_resized_crop_params",
    "resize_batch",
    "resize_shorter",
]

# Per-channel mean and std of x / 255 over each training set.
MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def normalize(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, inplace: bool = False
) -> torch.Tensor:
    """``(x - mean) / std`` per channel of float x (..., C, H, W) in [0, 1]; returns float32.
    ``inplace`` reuses x's storage when x is already float32."""
    shape = (len(mean), 1, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(shape)
    s = torch.tensor(std, dtype=torch.float32).view(shape)
    if inplace and x.dtype == torch.float32:
        return x.sub_(m).div_(s)
    return (x.to(torch.float32) - m) / s


def random_crop_flip(
    images: torch.Tensor, padding: int, hflip: bool, *, generator: torch.Generator | None
) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch, then a horizontal flip with probability 1/2.

    images: uint8 (or any dtype) (N, C, H, W). The crop offsets (N, 2) are drawn first, uniform on
    [0, 2 * padding], then the flip coins (N,), both from ``generator``. Zero padding is raw pixel 0
    (black), as torchvision's ``RandomCrop(size, padding)`` on an image.
    """
    n, c, h, w = images.shape
    out = images
    if padding:
        padded = F.pad(images, (padding, padding, padding, padding))  # (N, C, H+2p, W+2p)
        offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # view (N, C, 2p+1, 2p+1, H, W)
        out = windows[torch.arange(n), :, offsets[:, 0], offsets[:, 1]]  # (N, C, H, W)
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out.contiguous()


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (antialiased when shrinking) of float x (N, C, H, W) to size x size."""
    return F.interpolate(
        x,
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=size < max(x.shape[-2:]),
    )


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)``: a crop of a fraction ``scale`` of the area, aspect ratio in ``ratio``.

    Ten tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)); the first that fits is kept,
    its position uniform; else the central crop clamped to ``ratio``. Same draws, in the same order,
    as torchvision's ``RandomResizedCrop.get_params``.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(
            torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item(), generator=generator)
        ).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Bilinear resize to shorter side ``size`` (the longer side truncated, as torchvision)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.BILINEAR)  # type: ignore[attr-defined]  # pillow>=9 has it


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` crop (PIL pads with black where the image is smaller)."""
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


class ImageNetTrain:
    """Random resized crop (scale (0.08, 1), ratio (3/4, 4/3)) to ``size``, flip with p = 1/2,
    normalize. ``__call__(img, generator)`` -> float32 (3, size, size)."""

    def __init__(
        self,
        size: int = 224,
        mean: Sequence[float] = MEAN_STD["imagenet"][0],
        std: Sequence[float] = MEAN_STD["imagenet"][1],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    ) -> None:
        self.size, self.mean, self.std, self.scale, self.ratio = size, mean, std, scale, ratio

    def __call__(self, img: Image.Image, generator: torch.Generator | None) -> torch.Tensor:
        img = img.convert("RGB")
        top, left, h, w = random_resized_crop_params(
            img.height, img.width, self.scale, self.ratio, generator
        )
        img = img.crop((left, top, left + w, top + h)).resize(
            (self.size, self.size),
            Image.BILINEAR,  # type: ignore[attr-defined]  # as above
        )
        if torch.rand(1, generator=generator).item() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)  # type: ignore[attr-defined]  # as above
        return normalize(pil_to_tensor(img).float().div_(255.0), self.mean, self.std)


class ImageNetEval:
    """Resize the shorter side to ``resize`` (default ``round(size * 256 / 224)``), center crop
    ``size``, normalize. Deterministic: ``__call__(img, generator)`` ignores ``generator``."""

    def __init__(
        self,
        size: int = 224,
        resize: int | None = None,
        mean: Sequence[float] = MEAN_STD["imagenet"][0],
        std: Sequence[float] = MEAN_STD["imagenet"][1],
    ) -> None:
        self.size, self.mean, self.std = size, mean, std
        self.resize = round(size * 256 / 224) if resize is None else resize

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        img = center_crop(resize_shorter(img.convert("RGB"), self.resize), self.size)
        return normalize(pil_to_tensor(img).float().div_(255.0), self.mean, self.std)
