"""Any ImageFolder tree (the ImageNet layout): ``root/<split>/<class>/<image>``, decoded with PIL.

Classes are the sorted sub-folder names of ``root/train`` when it exists (so every split shares the
training label numbering), else of ``root/<split>``; images are every file with a known image
extension, sorted by path. ``augment=True`` applies the ImageNet training recipe
(`transforms.ImageNetTrain`), otherwise the evaluation one (`transforms.ImageNetEval`), both
normalized with the ImageNet mean and std.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .files import CorruptDataError, DatasetNotFoundError
from .transforms import MEAN_STD, ImageNetEval, ImageNetTrain

__all__ = ["EXTENSIONS", "ImageFolder", "load"]

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_GET = "pass --data.root DIR with DIR/<split>/<class>/<image> (the ImageNet train/val layout)"


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class ImageFolder(Dataset):
    """``(float32 (3, S, S) normalized image, int label)`` per file; S = ``image_size`` (224).

    ``get(index, generator=)`` draws the training augmentation from ``generator``; ``ds[index]``
    from torch's global RNG (which a torch DataLoader seeds per worker). Attributes: ``classes``,
    ``samples`` (list of (path, label)), ``num_classes``, ``input_shape``, ``name``, ``split``.
    """

    def __init__(
        self, root: str | Path, split: str, *, augment: bool = False, image_size: int | None = None
    ) -> None:
        size = 224 if image_size is None else image_size
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"imagefolder: image_size must be a positive int, got {image_size!r}")
        base = Path(root).expanduser()
        folder = base / split
        if not folder.is_dir():
            raise DatasetNotFoundError(f"imagefolder: split folder {folder} not found; {_GET}")
        class_root = base / "train" if (base / "train").is_dir() else folder
        self.classes = _classes(class_root)
        if not self.classes:
            raise DatasetNotFoundError(f"imagefolder: no class folders in {class_root}; {_GET}")
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for name in _classes(folder):
            if name not in index:
                raise ValueError(
                    f"imagefolder: class folder {folder / name} has no counterpart "
                    f"in {class_root}; the splits must share class names"
                )
            files = sorted(
                p
                for p in (folder / name).rglob("*")
                if p.is_file() and p.suffix.lower() in EXTENSIONS
            )
            self.samples += [(p, index[name]) for p in files]
        if not self.samples:
            raise DatasetNotFoundError(
                f"imagefolder: no images ({', '.join(EXTENSIONS)}) under {folder}; {_GET}"
            )
        self.name, self.split, self.root = "imagefolder", split, base
        self.num_classes = len(self.classes)
        self.input_shape = (3, size, size)
        self.augment = bool(augment)
        mean, std = MEAN_STD["imagenet"]
        self.transform = (
            ImageNetTrain(size, mean, std) if augment else ImageNetEval(size, None, mean, std)
        )

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        """The decoded RGB image of sample ``index``; an undecodable file is a `CorruptDataError`
        (a ValueError) naming it."""
        path = self.samples[index][0]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise CorruptDataError(
                f"{path}: cannot decode image ({type(e).__name__}: {e}); replace or remove the file"
            ) from e

    def get(self, index: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """Sample ``index`` with its augmentation drawn from ``generator``."""
        return self.transform(self.load_image(index), generator), self.samples[index][1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.get(index, generator=None)

    def __repr__(self) -> str:
        return (
            f"ImageFolder(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"classes={self.num_classes}, input_shape={self.input_shape}, "
            f"augment={self.augment})"
        )


def load(
    split: str,
    root: str | Path | None = None,
    *,
    augment: bool = False,
    image_size: int | None = None,
) -> ImageFolder:
    """`ImageFolder` of ``root/<split>``; ``root`` is required."""
    if root is None:
        raise DatasetNotFoundError(f"imagefolder: no root given; {_GET}")
    return ImageFolder(root, split, augment=augment, image_size=image_size)
