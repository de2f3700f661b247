"""A training run before its first step: what it is built from — its data splits
(``load_split``, with ``Head`` for a config's ``train_subset`` / ``eval_subset``), its seeded
model, ``QSGD`` optimizer and lr / dr schedule (``build_training``; the evaluation of a
checkpoint, ``train/evaluate.py``, builds them the same way) — and `RunSetup`: all of that for
one process, the batch stream, the position restored from a checkpoint on resume (validated
before anything is written) and the run directory with its files. The loop that then runs is
``train/loop.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.progress import Progress
from ..data import Batches, derive_seed, load_dataset
from ..optim import QSGD, param_groups
from ..run.config import RunConfig, RunConfigError
from ..run.model import build_model
from . import parallel
from .lifecycle import StopSignals
from .metrics import new_accumulator
from .resume import check_resumable
from .runfiles import RunFiles, shared_run_dir
from .schedule import Schedule
from .snapshot import restore

__all__ = ["Head", "RunSetup", "build_training", "load_split"]


class Head(torch.utils.data.Dataset):
    """The first ``n`` samples of a data set; every other attribute (``batch``, ``get``,
    ``augment``, ``num_classes``...) is the base's, so `Batches` keeps its fast path."""

    def __init__(self, base: Any, n: int) -> None:
        self.base, self.n = base, min(n, len(base))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.base[index]

    def __getattr__(self, name: str) -> Any:
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


def load_split(cfg: RunConfig, split: str, *, augment: bool, subset: int | None) -> Any:
    """Split ``split`` of the config's data set (its first ``subset`` samples when given); a
    ``ValueError`` of the data (unknown split, corrupt file) is the user's: a ``RunConfigError``."""
    d = cfg.data
    try:
        ds = load_dataset(d.name, split, d.root, augment=augment, image_size=d.image_size)
    except ValueError as exc:  # unknown split, corrupt file: the user's to fix
        raise RunConfigError(f"data: {' '.join(str(exc).split())}") from None
    return Head(ds, subset) if subset is not None else ds


def build_training(
    cfg: RunConfig, num_classes: int, in_channels: int, device: torch.device | None = None
) -> tuple[nn.Module, QSGD, Schedule]:
    """The model (seeded with ``train.seed``, on ``device``), its optimizer (the stochastic
    rounding generator seeded from ``train.seed``) and the schedule, at epoch 0."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, num_classes, in_channels)
    qcfg = cfg.quant_config()
    device = device or torch.device("cpu")
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    schedule = Schedule.from_config(cfg.optim, qcfg.grad_range)
    sr = torch.Generator(device=device).manual_seed(
        derive_seed(cfg.train.seed, "stochastic-rounding")
    )
    params: Any = model.parameters()
    if cfg.optim.float_lr is not None:  # the float parameters in their own group, at their lr
        params = [{**g, "lr": schedule.lr(0, g["role"])} for g in param_groups(model)]
    opt = QSGD(
        params,
        lr=schedule.lr(0),
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
        config=qcfg,
        generator=sr,
        grad_range=int(schedule.grad_range(0)),
        bn_weight_decay=cfg.optim.bn_weight_decay,
    )
    return model, opt, schedule


class RunSetup:
    """One process's run, set up: data, model (and its DDP wrapper ``net``), optimizer,
    schedule, batches, the position (``step``, accumulators, best accuracy; restored from
    ``ckpt`` on resume) and the run directory's files (``files``)."""

    def __init__(
        self,
        cfg: RunConfig,
        ckpt: dict[str, Any] | None,
        ckpt_path: Path | None,
        progress: Progress,
        command: list[str] | None,
        ctx: parallel.DistContext | None = None,
    ) -> None:
        self.cfg, self.progress = cfg, progress
        self.ctx = ctx = ctx or parallel.DistContext()
        parallel.check_same_config(ctx, cfg)
        d, t = cfg.data, cfg.train
        self.device = parallel.device_for(cfg, ctx)
        self.train_ds = load_split(cfg, d.train_split, augment=d.augment, subset=d.train_subset)
        self.eval_ds = load_split(cfg, d.eval_split, augment=False, subset=d.eval_subset)
        shape = self.train_ds.input_shape
        self.model, self.opt, self.schedule = build_training(
            cfg, self.train_ds.num_classes, shape[0], self.device
        )
        self.net = parallel.wrap(self.model, cfg, ctx, self.device)  # the model, or its DDP
        self.qcfg = self.opt.config
        self.batches = Batches(
            self.train_ds,
            d.batch_size,
            shuffle=True,
            generator=derive_seed(t.seed, "data"),
            drop_last=len(self.train_ds) >= d.batch_size,  # no tiny last batch for BN statistics
            num_workers=d.num_workers,
            shard=(ctx.rank, ctx.world),
        )
        self.step, self.best_acc = 0, None
        self.elapsed_before = 0.0  # training seconds of the run before this process (resume)
        self.acc = {"window": new_accumulator(), "epoch": new_accumulator()}
        self.last_eval: dict[str, Any] | None = None
        self.stop = StopSignals(enabled=False)  # train() hands over the active one
        self.stop_agreed = False  # every rank saw a stop request (set by _step)
        self.saved_at: int | None = None
        self.previous_status: str | None = None
        if ckpt is not None and ckpt_path is not None:  # all checked before the run dir is touched
            state = restore(
                ckpt,
                ckpt_path,
                model=self.model,
                opt=self.opt,
                batches=self.batches,
                world_size=ctx.world,
            )
            self.step, self.best_acc, self.acc, self.last_eval, self.elapsed_before = state
            self.run_dir = ckpt_path.parent
            self.previous_status = check_resumable(
                cfg,
                ckpt_path,
                self.run_dir,
                step=self.step,
                epoch=self.batches.state_dict()["epoch"],
                steps_per_epoch=len(self.batches),
                is_main=ctx.is_main,
            )
        else:
            self.run_dir = shared_run_dir(cfg, ctx)
        self.last_path, self.best_path = self.run_dir / "last.pt", self.run_dir / "best.pt"
        self.last_good = f"{ckpt_path} (step {self.step})" if ckpt is not None else None
        self.files = RunFiles(self.run_dir, is_main=ctx.is_main)
        self.files.open(
            cfg,
            ctx,
            model=self.model,
            steps_per_epoch=len(self.batches),
            step=self.step,
            checkpoint=ckpt_path,
            command=command,
            previous_status=self.previous_status,
        )
