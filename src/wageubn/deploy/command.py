"""``wageubn export`` / ``predict`` / ``dump-step``: the deployment subcommands (docs/deploy.md).

    wageubn export CHECKPOINT --out model.safetensors [--data mnist] [--float-weight-bits 8|16]
    wageubn predict MODEL.safetensors (--data mnist [--split test] | --images FILE_OR_DIR [--labels L.npy])
                    [--compare CHECKPOINT] [--batch-size 1000] [--limit N] [--backend auto]
    wageubn dump-step --model small_cnn --preset paper|int8 --out step.safetensors [--seed S] [--batch B]

``add_parser(subparsers)`` registers the three; each ``*_command(args) -> int`` is a plain function.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from ..convert import UnsupportedModuleError
from ..core.errors import UsageError
from ..core.progress import command_progress
from .format import DeployError

__all__ = ["USER_ERRORS", "add_parser", "evaluate_integer", "load_images"]

USER_ERRORS = (DeployError, UnsupportedModuleError)


# -- helpers shared by the commands and the measurement in docs/deploy.md ---------------------------


def load_images(path: str | Path, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) from a .npy (uint8 N×H×W or N×H×W×C) or a directory of PNG files."""
    import numpy as np

    path = Path(path)
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise UsageError(f"--images {path}: the directory has no .png files")
        mode = "L" if channels == 1 else "RGB"
        arr = np.stack([np.asarray(Image.open(f).convert(mode)) for f in files])
    elif path.suffix == ".npy" and path.is_file():
        arr = np.load(path, allow_pickle=False)
    else:
        raise UsageError(f"--images {path}: expected a .npy file or a directory of .png images")
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4):
        raise UsageError(
            f"--images {path}: need uint8 N×H×W[×C] pixels, got {arr.dtype} {arr.shape}"
        )
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t[:, None] if t.dim() == 3 else t.permute(0, 3, 1, 2).contiguous()
    if t.shape[1] != channels:
        raise UsageError(f"--images {path}: {t.shape[1]} channels, the model takes {channels}")
    return t


def _normalized(images: torch.Tensor, mean, std) -> torch.Tensor:
    """The float input of the trained model, computed as ``wageubn.data`` does it."""
    from ..data.transforms import normalize

    return normalize(images.to(torch.float32).div_(255.0), mean, std, inplace=True)


def evaluate_integer(
    model: Any,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    reference: torch.nn.Module | None = None,
    *,
    batch_size: int = 1000,
    progress: Any = None,
) -> dict[str, Any]:
    """Run an ``IntegerModel`` over uint8 ``images``: accuracy (with ``labels``), throughput, and
    with ``reference`` (the eval-mode quantized float model) the prediction agreement, the number
    of images whose logits differ, and the max |logit difference| (float64). ``progress`` (a
    `wageubn.train.progress.Progress`, optional) tracks the batches."""
    preds, seconds, agree, differ, max_diff = [], 0.0, 0, 0, 0.0
    mean = [float(m) for m in model.mean]
    std = [float(s) for s in model.std]
    starts = range(0, len(images), batch_size)
    if progress is not None:
        starts = progress.track(starts, total=len(starts), desc="predict", unit="batch")
    for i in starts:
        batch = images[i : i + batch_size]
        t0 = time.perf_counter()
        logits = model(batch)
        seconds += time.perf_counter() - t0
        pred = logits.argmax()
        preds.append(pred)
        if reference is not None:
            with torch.no_grad():
                ref = reference(_normalized(batch, mean, std))
            agree += int((ref.argmax(1) == pred).sum())
            diff = (logits.to_float(torch.float64) - ref.double()).abs()
            differ += int((logits.to_float(torch.float32) != ref).any(1).sum())
            max_diff = max(max_diff, float(diff.max()))
    pred = torch.cat(preds)
    n = len(images)
    out: dict[str, Any] = {"images": n, "seconds": seconds, "images_per_s": n / max(seconds, 1e-9)}
    if labels is not None:
        out["accuracy"] = float((pred == labels[:n]).double().mean())
    if reference is not None:
        out.update(agreement=agree / n, logits_differ=differ, max_logit_diff=max_diff)
    out["predictions"] = pred
    return out


# -- commands --------------------------------------------------------------------------------------


def export_command(args: argparse.Namespace) -> int:
    from .export import export_model

    out = Path(args.out)
    if not out.parent.is_dir():  # checked before the export's work
        raise UsageError(
            f"--out {out}: the directory {out.parent} does not exist; create it first "
            f"(mkdir -p {out.parent}); nothing was written"
        )
    try:
        out = export_model(
            args.checkpoint, out, data=args.data, float_weight_bits=args.float_weight_bits
        )
    except OSError as exc:
        kept = "; the existing file is unchanged" if out.exists() else ""
        raise UsageError(
            f"--out {out}: cannot write it ({exc.strerror or exc}); nothing was written{kept}; "
            "choose a writable --out"
        ) from None
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    from .export import model_from_checkpoint
    from .runtime import IntegerModel

    model = IntegerModel.load(args.model, backend=args.backend)
    labels = None
    if (args.data is None) == (args.images is None):
        raise UsageError("wageubn predict: give exactly one of --data NAME or --images PATH")
    if args.data is not None:
        from ..data import load_dataset

        ds = load_dataset(args.data, args.split, args.root)
        images, labels = ds.images, ds.labels
        if images.shape[1] != model.channels:
            raise UsageError(
                f"--data {args.data}: {images.shape[1]} channels, the model takes {model.channels}"
            )
        source = f"{args.data} {args.split}"
    else:
        images = load_images(args.images, model.channels)
        if args.labels is not None:
            import numpy as np

            labels = torch.from_numpy(np.load(args.labels, allow_pickle=False)).to(torch.int64)
        source = str(args.images)
    if args.limit is not None:
        images = images[: args.limit]
    reference = model_from_checkpoint(args.compare)[0] if args.compare else None
    with command_progress() as progress:
        r = evaluate_integer(
            model, images, labels, reference, batch_size=args.batch_size, progress=progress
        )
    line = f"{source}: {r['images']} images"
    if "accuracy" in r:
        line += f", accuracy {r['accuracy']:.4f}"
    if reference is not None:
        line += (
            f", agreement with {args.compare} {100 * r['agreement']:.2f}% "
            f"(logits differ on {r['logits_differ']} images, max |diff| {r['max_logit_diff']:.3g})"
        )
    line += f"; {r['images_per_s']:.0f} images/s (integer path, backend {args.backend})"
    print(line)
    return 0


def dump_step_command(args: argparse.Namespace) -> int:
    from ..config import WAGEUBNConfig
    from ..convert import quantize_
    from ..data import load_dataset
    from ..models import create_model
    from .golden import dump_step

    cfg = (
        WAGEUBNConfig.preset(args.preset).replace(
            quantize_stem=args.quantize_stem, quantize_head=args.quantize_head
        )
        if (args.quantize_stem or args.quantize_head)
        else WAGEUBNConfig.preset(args.preset)
    )
    ds = load_dataset(args.data, "train", args.root)
    kwargs: dict[str, Any] = {"num_classes": ds.num_classes, "in_channels": ds.input_shape[0]}
    if args.width is not None:
        kwargs["width"] = args.width
    torch.manual_seed(args.seed)
    model = quantize_(create_model(args.model, **kwargs), cfg)
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(ds), generator=gen)[: args.batch]
    batch = ds.batch(idx)
    opt = {"lr": args.lr, "seed": args.seed}
    out = dump_step(model, batch, opt, args.out, model_name=args.model, model_kwargs=kwargs)
    print(f"wrote {out}: one {cfg.name} step of {args.model} on {args.batch} {args.data} images")
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``export``, ``predict`` and ``dump-step``."""
    p = subparsers.add_parser("export", help="export a checkpoint for integer-only inference")
    p.add_argument("checkpoint", help="a .pt checkpoint or a run directory (its last.pt)")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--data", default=None, help="normalization (default: the run's data set)")
    p.add_argument(
        "--float-weight-bits",
        type=int,
        choices=(8, 16),
        default=8,
        help="codes for float (unquantized) conv/linear weights: 8, or 16 as two int8 digits",
    )
    p.set_defaults(func=export_command)

    p = subparsers.add_parser("predict", help="integer-only inference with an exported model")
    p.add_argument("model", help="an exported .safetensors model")
    p.add_argument("--data", default=None, help="a data set name (mnist, ...)")
    p.add_argument("--split", default="test", help="split of --data (default test)")
    p.add_argument("--root", default=None, help="data root (default: the data set's own)")
    p.add_argument("--images", default=None, help=".npy uint8 N×H×W[×C] or a directory of PNGs")
    p.add_argument("--labels", default=None, help=".npy int labels for --images")
    p.add_argument(
        "--compare",
        default=None,
        metavar="CHECKPOINT",
        help="also run the checkpoint's quantized model: agreement, logit difference",
    )
    p.add_argument("--batch-size", type=int, default=1000, help="images per batch (default 1000)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument(
        "--backend", default="auto", help="wageubn.kernels backend (auto, cpu, reference)"
    )
    p.set_defaults(func=predict_command)

    p = subparsers.add_parser(
        "dump-step",
        help="golden tensors of one training step",
        description="Run one training step of a quantized model on a real batch and write every "
        "W, A, E1, E2, G, U and BN quantity as integer codes (docs/golden-tensors.md).",
    )
    p.add_argument("--model", default="small_cnn", help="a registered model (default small_cnn)")
    p.add_argument(
        "--preset",
        default="paper",
        choices=("paper", "paper_e2_16", "int8"),
        help="quantization preset (default paper)",
    )
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--seed", type=int, default=0, help="init, batch choice and G's rounding")
    p.add_argument("--batch", type=int, default=32, help="images in the step (default 32)")
    p.add_argument("--width", type=int, default=None, help="small_cnn width (default 16)")
    p.add_argument(
        "--lr", type=float, default=0.0625, help="learning rate of the update (default 0.0625)"
    )
    p.add_argument("--data", default="mnist", help="data set the batch comes from (default mnist)")
    p.add_argument("--root", default=None, help="data root (default: the data set's own)")
    p.add_argument(
        "--quantize-stem",
        action="store_true",
        help="also quantize the first conv (float by default)",
    )
    p.add_argument(
        "--quantize-head",
        action="store_true",
        help="also quantize the last linear layer (float by default)",
    )
    p.set_defaults(func=dump_step_command)
