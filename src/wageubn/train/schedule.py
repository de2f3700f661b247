"""Piecewise-constant schedules of the learning rate and the gradient range dr (WAGEUBN §4).

The released ImageNet recipe changes both at epoch boundaries::

    epochs      [0, 30)  [30, 60)  [60, 80)  [80, 90)  [90, 100)
    lr          0.05     0.006     0.003     0.0015    0.0015      (0.05 × [1, .12, .06, .03, .03])
    dr          128      128       32        8         2

With 10 lr bits the lr is a multiple of 2^-9 ≈ 0.00195, so 0.0015 quantizes to 0.00195 and a
plain ×0.01 decay would give 0: the late decay is carried by dr instead. ``scheduled_lr_q`` is
the quantized lr of a scheduled value, as the metrics report it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..config import WAGEUBNConfig
from ..optim import quantized_lr
from ..run.config import OptimSection

__all__ = ["PiecewiseConstant", "Schedule", "scheduled_lr_q"]


@dataclass(frozen=True)
class PiecewiseConstant:
    """``values[i]`` for epochs in ``[milestones[i-1], milestones[i])`` (0-based epochs)."""

    milestones: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.milestones) + 1:
            raise ValueError(
                f"PiecewiseConstant: {len(self.milestones)} milestones need "
                f"{len(self.milestones) + 1} values, got {len(self.values)}"
            )
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"PiecewiseConstant: milestones must increase, got {self.milestones}")

    def __call__(self, epoch: int) -> float:
        return self.values[bisect.bisect_right(self.milestones, epoch)]


class Schedule:
    """The lr and dr of every epoch, written into an optimizer's param groups once per step."""

    def __init__(
        self,
        base_lr: float,
        milestones: Sequence[int],
        lr_multipliers: Sequence[float],
        grad_range_values: Sequence[int] | None,
        default_grad_range: int,
        float_lr: float | None = None,
    ) -> None:
        ms = tuple(int(m) for m in milestones)
        self.base_lr = float(base_lr)
        self.float_lr = None if float_lr is None else float(float_lr)
        self.lr_multiplier = PiecewiseConstant(ms, tuple(float(v) for v in lr_multipliers))
        drs = grad_range_values or [default_grad_range] * (len(ms) + 1)
        self.grad_range = PiecewiseConstant(ms, tuple(int(v) for v in drs))

    @classmethod
    def from_config(cls, optim: OptimSection, default_grad_range: int) -> Schedule:
        return cls(
            optim.lr,
            optim.lr_milestones,
            optim.lr_multipliers,
            optim.grad_range_values,
            default_grad_range,
            optim.float_lr,
        )

    def lr(self, epoch: int, role: str | None = None) -> float:
        """The scheduled lr of ``epoch``; of the param groups with ``role`` "float", the scheduled
        ``float_lr`` when one is set."""
        base = self.float_lr if role == "float" and self.float_lr is not None else self.base_lr
        return base * self.lr_multiplier(epoch)

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int) -> tuple[float, int]:
        """Set ``lr`` and ``grad_range`` of every param group for ``epoch``; returns the lr of
        the quantized layers and dr."""
        lr, dr = self.lr(epoch), int(self.grad_range(epoch))
        for group in optimizer.param_groups:
            group["lr"] = self.lr(epoch, group.get("role"))
            if "grad_range" in group:
                group["grad_range"] = dr
        return lr, dr

    def state_dict(self, epoch: int) -> dict[str, float | int]:
        """The schedule position saved in checkpoints (informational: it follows from epoch)."""
        return {"epoch": epoch, "lr": self.lr(epoch), "grad_range": int(self.grad_range(epoch))}


def scheduled_lr_q(lr: float, qcfg: WAGEUBNConfig) -> float:
    """``QC(lr, k_LR)`` of a scheduled lr, for the metrics. The config refuses a base lr that
    quantizes to 0; a schedule may decay below the grid (the released recipe avoids it, a user's
    may not): then lr_q is 0, QSGD warns once and applies no update, and the run goes on."""
    try:
        return quantized_lr(lr, qcfg)
    except ValueError:  # quantized_lr's only error: a non-zero lr below half an lr step
        return 0.0
