"""Evaluation of a model on a data set: mean cross-entropy and top-1 accuracy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.progress import Progress
from ..data import Batches

__all__ = ["evaluate"]


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
