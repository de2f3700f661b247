"""The trainer's state in a checkpoint: what ``last.pt`` / ``best.pt`` hold (``checkpoint_payload``),
the check that none of it is NaN/Inf before it may replace a good file (``non_finite``), and
putting it back on resume (``restore``).

A checkpoint holds the model, the optimizer (momentum buffers and the stochastic-rounding
generator), the data position, torch's RNG, the schedule, the metric accumulators, the best and
last evaluation, the training time so far, the run config, the world size and the versions; a
run resumed from it continues bit for bit like an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ..core.version import __version__
from ..data import Batches
from ..optim import QSGD
from ..run.checkpoint import CheckpointError

__all__ = ["Counters", "checkpoint_payload", "non_finite", "restore"]


class Counters(NamedTuple):
    """Where a run stands besides its tensors: what ``restore`` gives back to the trainer."""

    step: int
    best_acc: float | None
    accumulators: dict[str, dict[str, Any]]
    last_eval: dict[str, Any] | None
    elapsed_s: float


def non_finite(model_state: dict[str, Any], opt_state: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor of the model state or of a momentum buffer
    of the optimizer state that holds NaN/Inf, or None."""
    tensors = list(model_state.items()) + [
        (f"momentum buffer of optimizer parameter {i}", s["momentum_buffer"])
        for i, s in opt_state["state"].items()
        if "momentum_buffer" in s
    ]
    for name, value in tensors:
        if value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


def checkpoint_payload(
    *,
    model_state: dict[str, Any],
    opt_state: dict[str, Any],
    batches: Batches,
    step: int,
    schedule_state: dict[str, Any],
    accumulators: dict[str, dict[str, Any]],
    best_acc: float | None,
    last_eval: dict[str, Any] | None,
    elapsed_s: float,
    run_config: dict[str, Any],
    world_size: int,
) -> dict[str, Any]:
    """The checkpoint dict (``wageubn.run.checkpoint.serialize_checkpoint`` writes it) after
    optimizer step ``step``; torch's RNG state is read now."""
    return {
        "model": model_state,
        "optimizer": opt_state,
        "batches": batches.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        "epoch": batches.state_dict()["epoch"],
        "step": step,
        "schedule": schedule_state,
        "accumulators": {k: dict(v) for k, v in accumulators.items()},
        "best_acc": best_acc,
        "last_eval": last_eval,
        "elapsed_s": elapsed_s,
        "run_config": run_config,
        "world_size": world_size,
        "versions": {"wageubn": __version__, "torch": str(torch.__version__)},
    }


def restore(
    ckpt: dict[str, Any],
    path: Path,
    *,
    model: nn.Module,
    opt: QSGD,
    batches: Batches,
    world_size: int,
) -> Counters:
    """Load ``ckpt`` into the model, optimizer, data position and torch's RNG; a checkpoint of
    another world size, or one that does not fit, is a ``CheckpointError`` naming ``path``."""
    saved_world = int(ckpt.get("world_size", 1))
    if saved_world != world_size:
        raise CheckpointError(
            f"{path}: written by {saved_world} process(es), resumed with {world_size}; "
            f"resume with the same world size (torchrun --nproc_per_node={saved_world})"
        )
    try:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        batches.load_state_dict(ckpt["batches"])
        torch.set_rng_state(ckpt["rng"]["torch"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: does not fit this run ({first})") from None
    return Counters(
        step=int(ckpt["step"]),
        best_acc=ckpt.get("best_acc"),
        accumulators={k: dict(v) for k, v in ckpt["accumulators"].items()},
        last_eval=ckpt.get("last_eval"),
        elapsed_s=float(ckpt.get("elapsed_s", 0.0)),
    )
