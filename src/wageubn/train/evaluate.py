"""Evaluation: the mean cross-entropy and top-1 accuracy of a model on a data set (``evaluate``),
and of a checkpoint's model on a split of its run's data set (``evaluate_checkpoint``, the
``wageubn eval`` command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import WAGEUBNConfig
from ..core.progress import Progress
from ..data import Batches
from ..run.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from ..run.config import RunConfig
from .lifecycle import describe_status, read_run_info
from .prepare import build_training, load_split

__all__ = ["evaluate", "evaluate_checkpoint"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    batch_size: int,
    *,
    channels_last: bool = False,
    num_workers: int = 0,
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` (eval mode) over ``dataset``;
    ``progress`` (optional) tracks the batches."""
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    batches = Batches(dataset, batch_size, shuffle=False, generator=None, num_workers=num_workers)
    progress = progress or Progress()
    try:
        for x, y in progress.track(batches, total=len(batches), desc="eval", unit="batch"):
            if device is not None:
                x, y = x.to(device), y.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model(x)
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += y.numel()
    finally:
        model.train(was_training)
    return {"loss": loss_sum / n, "acc": correct / n, "images": n}


def evaluate_checkpoint(
    path: str | Path,
    split: str | None = None,
    *,
    root: str | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint's model on ``split`` (default: its run's ``data.eval_split``).

    ``preset`` (optional) evaluates the checkpoint's weights in another preset's arithmetic — e.g.
    weights trained in ``int8`` with ``paper``'s forward, or the reverse — keeping the run's other
    quant settings; the result's ``preset`` says which one ran. ``run_status`` in the result is the
    status of the run directory holding the checkpoint (from its run.json; a "running" run whose
    process is gone says so), or None."""
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path)
    saved, source = ckpt["run_config"], f"{path} run_config"
    if preset is not None:
        WAGEUBNConfig.preset(preset)  # an unknown name: the preset error, with a suggestion
        saved = {**saved, "quant": {**saved.get("quant", {}), "preset": preset}}
        source += f" under preset {preset!r}"  # a clash with the run's own quant keys is named
    cfg = RunConfig.from_dict(saved, source=source)
    if root is not None:
        cfg.data.root = root
    split = split or cfg.data.eval_split
    ds = load_split(cfg, split, augment=False, subset=None)
    model, _, _ = build_training(cfg, ds.num_classes, ds.input_shape[0])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{path}: model weights do not fit {cfg.model.name}: {first}"
        ) from None
    bs = batch_size or cfg.data.eval_batch_size or cfg.data.batch_size
    result = evaluate(
        model,
        ds,
        bs,
        channels_last=cfg.train.channels_last,
        num_workers=cfg.data.num_workers,
        progress=progress,
    )
    info = read_run_info(path.parent / "run.json")
    run_status = describe_status(info)[0] if info is not None else None
    return {
        **result,
        "split": split,
        "checkpoint": str(path),
        "step": ckpt["step"],
        "preset": cfg.quant.get("preset", "paper"),
        "run_status": run_status,
    }
