"""The training loop: ``train(run_config) -> result`` and ``evaluate_checkpoint(path)``.

One run::

    model  = quantize_(create_model(name, num_classes, in_channels), WAGEUBNConfig)
    opt    = QSGD(..., generator=seeded)            # stochastic rounding of G, saved in checkpoints
    for each epoch:  lr, dr = schedule(epoch)       # written into the param groups every step
        for x, y in Batches(train):                  # resumable, deterministic order
            loss = cross_entropy(model(x), y); loss.backward(); opt.step()
            rows -> metrics.jsonl/csv; last.pt every checkpoint_every_steps
        evaluate(eval split) -> eval row; last.pt (+ best.pt)

A resumed run continues bit for bit like an uninterrupted one: the checkpoint holds the model,
the optimizer (momentum + the SR generator), the data position, torch's RNG and the metric
accumulators. A non-finite loss or a quantizer's ValueError (NaN/Inf reaching the integer grid)
stops the run with `TrainingError`; nothing is saved after the failing step. An undecodable data
file or a failed write (disk full, read-only directory) stops it with `TrainingIOError`, naming
the file and the last good checkpoint, which stays intact. SIGTERM/SIGINT (``handle_signals``)
write a checkpoint and stop with `TrainingInterrupted`. Every ending is recorded in run.json
(train/lifecycle.py).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.progress import LogProgress, Progress
from ..core.version import __version__
from ..data import Batches, CorruptDataError, derive_seed, load_dataset
from ..optim import QSGD
from ..optim.qsgd import quantized_lr
from ..run.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    resolve_checkpoint,
    serialize_checkpoint,
)
from ..run.config import RunConfig, RunConfigError
from ..run.model import build_model
from ..run.overrides import dump_yaml
from . import parallel
from .evaluate import evaluate
from .lifecycle import (
    StopSignals,
    TrainingInterrupted,
    describe_status,
    read_run_info,
    write_run_info,
)
from .metrics import MetricsWriter
from .resume import RESUMABLE_KEYS, check_compatible, config_from_checkpoint
from .rundir import as_run_config, new_run_dir, reason, run_record
from .schedule import Schedule

__all__ = [
    "RESUMABLE_KEYS",
    "config_from_checkpoint",
    "TrainingError",
    "TrainingIOError",
    "TrainingInterrupted",
    "evaluate",
    "evaluate_checkpoint",
    "train",
]

log = logging.getLogger("wageubn.train")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, NaN/Inf reaching a quantizer); names where it
    stopped and the last good checkpoint."""


class TrainingIOError(TrainingError):
    """Training stopped on a file the user fixes: an undecodable data file, or a write that
    failed (disk full, read-only or vanished directory). Names the file, what happened and what
    is saved (the last checkpoint stays intact); the CLI exits with status 2."""


# -- data ----------------------------------------------------------------------------------------


class _Head(torch.utils.data.Dataset):
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


def _load(cfg: RunConfig, split: str, *, augment: bool, subset: int | None) -> Any:
    d = cfg.data
    try:
        ds = load_dataset(d.name, split, d.root, augment=augment, image_size=d.image_size)
    except ValueError as exc:  # unknown split, corrupt file: the user's to fix
        raise RunConfigError(f"data: {' '.join(str(exc).split())}") from None
    return _Head(ds, subset) if subset is not None else ds


# -- model and optimizer ------------------------------------------------------------------------


def _build(
    cfg: RunConfig, num_classes: int, in_channels: int, device: torch.device | None = None
) -> tuple[nn.Module, QSGD, Schedule]:
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
    opt = QSGD(
        model.parameters(),
        lr=schedule.lr(0),
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
        config=qcfg,
        generator=sr,
        grad_range=int(schedule.grad_range(0)),
        bn_weight_decay=cfg.optim.bn_weight_decay,
    )
    return model, opt, schedule


# -- evaluation ---------------------------------------------------------------------------------


def evaluate_checkpoint(
    path: str | Path,
    split: str | None = None,
    *,
    root: str | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint's model on ``split`` (default: its run's ``data.eval_split``).

    ``run_status`` in the result is the status of the run directory holding the checkpoint (from
    its run.json; a "running" run whose process is gone says so), or None."""
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path)
    cfg = RunConfig.from_dict(ckpt["run_config"], source=f"{path} run_config")
    if root is not None:
        cfg.data.root = root
    split = split or cfg.data.eval_split
    ds = _load(cfg, split, augment=False, subset=None)
    model, _, _ = _build(cfg, ds.num_classes, ds.input_shape[0])
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
        "run_status": run_status,
    }


# -- the run ------------------------------------------------------------------------------------


def train(
    config: RunConfig | dict[str, Any] | str | Path,
    *,
    resume: str | Path | None = None,
    progress: Progress | None = None,
    command: list[str] | None = None,
    handle_signals: bool = False,
) -> dict[str, Any]:
    """Train as ``config`` says; continue from ``resume`` (a checkpoint or run directory).

    Returns ``{"run_dir", "step", "epoch", "train_loss", "eval", "best_acc", "last_checkpoint",
    "best_checkpoint", "status", "wall_s"}``. Raises `RunConfigError`, `CheckpointError`,
    ``DatasetNotFoundError`` (before anything is written), `TrainingError` (during the run) and
    its subclass `TrainingIOError` (a data file or a write failed). With ``handle_signals`` (the
    CLI; main thread only) SIGTERM and SIGINT stop the run between two steps with a checkpoint
    and raise `TrainingInterrupted` (a KeyboardInterrupt).
    """
    cfg = as_run_config(config)
    ckpt, ckpt_path = None, None
    if resume is not None:
        ckpt_path = resolve_checkpoint(resume)
        ckpt = load_checkpoint(ckpt_path)
        check_compatible(cfg, ckpt["run_config"], ckpt_path)
    threads = torch.get_num_threads()
    ctx = parallel.setup(cfg)
    clean = False
    try:
        if cfg.train.threads is not None:
            torch.set_num_threads(cfg.train.threads)
        if not ctx.is_main:
            progress = _Silent()
        with StopSignals(handle_signals) as stop:
            run = _Run(
                cfg, ckpt, ckpt_path, progress or LogProgress(cfg.train.log_every), command, ctx
            )
            run.stop = stop
            result = run.run()
        clean = True
        return result
    finally:
        torch.set_num_threads(threads)
        parallel.teardown(ctx, clean=clean)


class _Run:
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
        self.train_ds = _load(cfg, d.train_split, augment=d.augment, subset=d.train_subset)
        self.eval_ds = _load(cfg, d.eval_split, augment=False, subset=d.eval_subset)
        shape = self.train_ds.input_shape
        self.model, self.opt, self.schedule = _build(
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
        self.acc = {"window": _zeros(), "epoch": _zeros()}
        self.last_eval: dict[str, Any] | None = None
        self.stop = StopSignals(enabled=False)  # train() hands over the active one
        self.stop_agreed = False  # every rank saw a stop request (set by _step)
        self.saved_at: int | None = None
        self.previous_status: str | None = None
        if ckpt is not None:  # everything is validated before the run directory is touched
            self._restore(ckpt, ckpt_path)
            self.run_dir = ckpt_path.parent
            self._check_resumable(ckpt_path)
        else:
            made: Any = None
            if ctx.is_main:
                try:
                    made = str(new_run_dir(cfg))
                except RunConfigError as exc:  # every rank raises it; rank 0 prints it
                    made = exc
            made = parallel.broadcast(ctx, made)
            if isinstance(made, RunConfigError):
                raise made
            self.run_dir = Path(made)
        self.last_path, self.best_path = self.run_dir / "last.pt", self.run_dir / "best.pt"
        self.last_good = f"{ckpt_path} (step {self.step})" if ckpt is not None else None
        self.diag = None
        self.metrics: Any = _NoMetrics()
        failed: TrainingIOError | None = None
        if ctx.is_main:  # only rank 0 writes the run directory
            try:
                self._write_run_files(ckpt_path, ckpt, command)
                self.metrics = MetricsWriter(
                    self.run_dir,
                    keep_until_step=self.step if ckpt is not None else None,
                    tensorboard=t.tensorboard,
                )
                if cfg.diag.every is not None:
                    from ..diagnostics import Diagnostics

                    self.diag = Diagnostics(
                        self.model,
                        every=cfg.diag.every,
                        path=self.run_dir / "diagnostics.jsonl",
                        sink=self.metrics.diagnostics if t.tensorboard else None,
                    )
            except OSError as exc:
                kept = (
                    f"{ckpt_path} (step {self.step}) and the run's files are unchanged; make the "
                    "directory writable, or copy it elsewhere and resume from the copy"
                    if ckpt is not None
                    else "pass a writable --train.out_dir"
                )
                failed = TrainingIOError(
                    f"cannot write to the run directory {self.run_dir} ({reason(exc)}); "
                    f"nothing was trained; {kept}"
                )
        failed = parallel.broadcast(ctx, failed)  # every rank stops, not only rank 0
        if failed is not None:
            raise failed

    def _check_resumable(self, path: Path) -> None:
        """Refuse a resume that would do nothing or race a live process (before any write)."""
        t, spe = self.cfg.train, len(self.batches)
        epoch = self.batches.state_dict()["epoch"]
        if t.max_steps is not None and self.step >= t.max_steps and epoch < t.epochs:
            raise RunConfigError(
                f"{path}: the run is at step {self.step}, which train.max_steps={t.max_steps} "
                f"does not exceed, with {t.epochs * spe - self.step} steps of "
                f"train.epochs={t.epochs} left; to continue pass --train.max_steps N with "
                f"N > {self.step}, or --train.max_steps null for the remaining epochs"
            )
        info = read_run_info(self.run_dir / "run.json")
        if info is None:
            return
        status, running = describe_status(info)
        if running:
            raise CheckpointError(
                f"{self.run_dir}: run.json says the run is {status}; wait for it to finish or "
                "stop it (kill -TERM PID writes a checkpoint) before resuming"
            )
        if info.get("status") == "running":
            self.previous_status = status
            if self.ctx.is_main:
                log.warning("%s: the previous run %s; resuming from %s", self.run_dir, status, path)

    def _restore(self, ckpt: dict[str, Any], path: Path) -> None:
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != self.ctx.world:
            raise CheckpointError(
                f"{path}: written by {saved_world} process(es), resumed with {self.ctx.world}; "
                f"resume with the same world size (torchrun --nproc_per_node={saved_world})"
            )
        try:
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.batches.load_state_dict(ckpt["batches"])
            torch.set_rng_state(ckpt["rng"]["torch"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path}: does not fit this run ({first})") from None
        self.step, self.best_acc = int(ckpt["step"]), ckpt.get("best_acc")
        self.acc = {k: dict(v) for k, v in ckpt["accumulators"].items()}
        self.last_eval = ckpt.get("last_eval")
        self.elapsed_before = float(ckpt.get("elapsed_s", 0.0))

    def _write_run_files(
        self, ckpt_path: Path | None, ckpt: Any, command: list[str] | None
    ) -> None:
        atomic_write_bytes(self.run_dir / "config.yaml", dump_yaml(self.cfg).encode())
        info_path = self.run_dir / "run.json"
        info = run_record(
            self.cfg,
            read_run_info(info_path) if ckpt is not None else None,
            model=self.model,
            steps_per_epoch=len(self.batches),
            step=self.step,
            checkpoint=ckpt_path,
            command=command,
            previous_status=self.previous_status,
        )
        self.info, self.info_path = info, info_path
        write_run_info(info_path, info)

    def _set_status(self, status: str) -> None:
        if not self.ctx.is_main or not hasattr(self, "info"):
            return
        self.info["status"] = status
        try:
            write_run_info(self.info_path, self.info)
        except OSError as exc:  # disk full: run.json keeps "running", which the owner check sees
            log.warning("%s: could not record status %r (%s)", self.info_path, status, exc)

    # -- checkpoints ----------------------------------------------------------------------------
    def _save(self, epoch: int, *, best: bool = False) -> None:
        if not self.ctx.is_main:
            self.last_good = f"{self.last_path} (step {self.step})"
            return
        model_state, opt_state = self.model.state_dict(), self.opt.state_dict()
        tensors = list(model_state.items()) + [
            (f"momentum buffer of optimizer parameter {i}", s["momentum_buffer"])
            for i, s in opt_state["state"].items()
            if "momentum_buffer" in s
        ]
        for name, value in tensors:  # never replace a good checkpoint with a bad state
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise self._error(epoch, f"{name} is not finite (not saved)")
        payload = {
            "model": model_state,
            "optimizer": opt_state,
            "batches": self.batches.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "epoch": self.batches.state_dict()["epoch"],
            "step": self.step,
            "schedule": self.schedule.state_dict(epoch),
            "accumulators": {k: dict(v) for k, v in self.acc.items()},
            "best_acc": self.best_acc,
            "last_eval": self.last_eval,
            "elapsed_s": time.perf_counter() - self.t0,
            "run_config": self.cfg.to_dict(),
            "world_size": self.ctx.world,
            "versions": {"wageubn": __version__, "torch": str(torch.__version__)},
        }
        data = serialize_checkpoint(payload)
        for path in (self.last_path, self.best_path) if best else (self.last_path,):
            try:
                atomic_write_bytes(path, data)
            except OSError as exc:  # the previous file at `path` is intact (atomic write)
                raise self._io_error(
                    epoch, f"cannot write the checkpoint {path} ({reason(exc)})"
                ) from None
            if path == self.last_path:
                self.last_good = f"{self.last_path} (step {self.step})"
                self.saved_at = self.step

    def _error(
        self, epoch: int, what: str, *, kind: type[TrainingError] = TrainingError, fix: str = ""
    ) -> TrainingError:
        where = self.last_good or "none (no checkpoint was written yet)"
        return kind(
            f"training stopped at epoch {epoch} step {self.step}: {what}; last good checkpoint: "
            f"{where}; {fix or 'see docs/troubleshooting.md'}"
        )

    def _io_error(
        self, epoch: int, what: str, fix: str = "free space or fix the directory"
    ) -> TrainingError:
        """A `TrainingIOError`: what failed, the intact last checkpoint and how to go on."""
        then = (
            f"then continue with wageubn train --resume {self.run_dir}"
            if self.last_good
            else "then start the run again"
        )
        return self._error(epoch, what, kind=TrainingIOError, fix=f"{fix}, {then}")

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t, spe = self.cfg.train, len(self.batches)
        total = t.epochs * spe if t.max_steps is None else min(t.epochs * spe, t.max_steps)
        start = time.perf_counter()
        self.t0 = start - self.elapsed_before  # elapsed_s counts on across resumes
        if self.ctx.is_main:
            log.info(
                "run %s: %s on %s (%d train / %d eval images), %d steps/epoch, %d steps to go",
                self.run_dir,
                self.cfg.model.name,
                self.cfg.data.name,
                len(self.train_ds),
                len(self.eval_ds),
                spe,
                max(0, total - self.step),
            )
        self.progress.start(self.step, total)
        epoch = self.batches.state_dict()["epoch"]
        try:
            while epoch < t.epochs and self.step < total:
                self._run_epoch(epoch, total)
                if self._stopping():  # a signal during the epoch's last step or evaluation
                    raise self._interrupted(epoch)
                epoch = self.batches.state_dict()["epoch"]
        except TrainingInterrupted as exc:
            if exc.saved:
                raise  # its status is recorded
            name = signal.Signals(exc.signum).name
            self._set_status(
                f"interrupted by a second {name} at step {self.step}; last good checkpoint: "
                f"{self.last_good}"
            )
            raise TrainingInterrupted(
                f"interrupted by a second {name} at epoch {epoch} step {self.step}, at once; last "
                f"good checkpoint: {self.last_good}; continue with wageubn train --resume "
                f"{self.run_dir}",
                exc.signum,
                saved=False,
            ) from None
        except TrainingError as exc:
            self._set_status(f"failed: {exc}")
            raise
        except KeyboardInterrupt:
            self._set_status(
                f"interrupted at step {self.step}; last good checkpoint: {self.last_good}"
            )
            raise
        except CorruptDataError as exc:
            error = self._io_error(epoch, str(exc), fix="replace or remove that file")
            self._set_status(f"failed: {error}")
            raise error from None
        except OSError as exc:  # metrics, diagnostics or run.json (checkpoints say so themselves)
            what = f"a write to the run directory {self.run_dir} failed ({reason(exc)})"
            if exc.errno == errno.ENOSPC:
                what = f"the disk holding {self.run_dir} is full"
            error = self._io_error(epoch, what)
            self._set_status(f"failed: {error}")
            raise error from None
        except RuntimeError as exc:
            if not (self.ctx.active and parallel.is_timeout(exc)):
                self._set_status(f"crashed at step {self.step}: {type(exc).__name__}: {exc}")
                raise
            error = self._error(
                epoch,
                f"another process did not answer within dist.timeout={self.cfg.dist.timeout:g} s "
                f"({' '.join(str(exc).split())[:200]})",
                fix="check that every process is alive; raise --dist.timeout if rank 0's "
                "evaluation or checkpoint takes longer",
            )
            self._set_status(f"failed: {error}")
            raise error from None
        except Exception as exc:
            self._set_status(f"crashed at step {self.step}: {type(exc).__name__}: {exc}")
            raise
        finally:
            self.progress.close()
            try:
                self.metrics.close()
            except OSError as exc:
                log.warning("%s: closing the metrics files failed (%s)", self.run_dir, exc)
        done = self.batches.state_dict()["epoch"] >= t.epochs
        status = "completed" if done else f"stopped at max_steps={t.max_steps}"
        self._set_status(status)
        return {
            "run_dir": str(self.run_dir),
            "step": self.step,
            "epoch": self.batches.state_dict()["epoch"],
            "eval": self.last_eval,
            "best_acc": self.best_acc,
            "last_checkpoint": str(self.last_path) if self.last_path.exists() else None,
            "best_checkpoint": str(self.best_path) if self.best_path.exists() else None,
            "status": status,
            "wall_s": time.perf_counter() - start,
        }

    def _stopping(self) -> bool:
        """A stop signal arrived (in every process, when there are several)."""
        return self.stop_agreed if self.ctx.active else self.stop.signum is not None

    def _interrupted(self, epoch: int) -> TrainingInterrupted:
        """Checkpoint (unless this step is saved), record "interrupted", the exception to raise."""
        if self.saved_at != self.step:
            self._save(epoch)
        signum = self.stop.signum or signal.SIGTERM  # another rank's signal: torchrun's SIGTERM
        name = signal.Signals(signum).name
        self._set_status(f"interrupted by {name} at step {self.step}; saved {self.last_good}")
        return TrainingInterrupted(
            f"interrupted by {name} at epoch {epoch} step {self.step}; saved {self.last_good}; "
            f"continue with wageubn train --resume {self.run_dir}",
            signum,
        )

    def _run_epoch(self, epoch: int, total: int) -> bool:
        """One (possibly resumed) epoch; False when max_steps stopped it before its end."""
        t = self.cfg.train
        self.batches.set_epoch(epoch)
        lr, dr = self.schedule.apply(self.opt, epoch)
        lr_q = _scheduled_lr_q(lr, self.qcfg)
        self.model.train()
        window_start = time.perf_counter()
        spe = len(self.batches)
        for x, y in self.batches:
            if t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.step += 1
            loss, correct, count = self._step(x, y, epoch)
            for acc in self.acc.values():
                acc["loss_sum"] += loss
                acc["steps"] += 1
                acc["correct"] += correct
                acc["count"] += count
            now = time.perf_counter()
            w = self.acc["window"]
            stats = {
                "loss": w["loss_sum"] / w["steps"],
                "acc": w["correct"] / w["count"],
                "lr_q": lr_q,
                "grad_range": dr,
                "images_per_s": w["count"] / max(now - window_start, 1e-9),
            }
            if self.step % t.log_every == 0:
                self._row("train", epoch, {**stats, "lr": lr}, now)
                self.acc["window"] = _zeros()
                window_start = now
            self.progress.update(self.step, epoch, stats)
            end_of_epoch = self.batches.state_dict()["position"] == 0
            if not end_of_epoch and self.step >= total:  # max_steps: evaluate, keep the best
                self._save(epoch, best=self._evaluate(epoch))
                return False
            if not end_of_epoch and t.checkpoint_every_steps:
                if self.step % t.checkpoint_every_steps == 0:
                    self._save(epoch)
            if not end_of_epoch and self._stopping():  # at an epoch's end: after its evaluation
                raise self._interrupted(epoch)
        if self.batches.state_dict()["epoch"] != epoch + 1 or self.acc["epoch"]["steps"] == 0:
            raise RuntimeError(f"internal: epoch {epoch} of {spe} batches did not complete")
        e = self.acc["epoch"]
        self._row(
            "epoch",
            epoch,
            {
                "loss": e["loss_sum"] / e["steps"],
                "acc": e["correct"] / e["count"],
                "lr": lr,
                "lr_q": lr_q,
                "grad_range": dr,
            },
            time.perf_counter(),
        )
        self.acc["epoch"] = _zeros()
        best = False
        if (epoch + 1) % t.eval_every_epochs == 0 or epoch + 1 == t.epochs or self.step >= total:
            best = self._evaluate(epoch)
        self._save(epoch, best=best)
        return True

    def _step(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[float, int, int]:
        """One optimizer step; returns (mean loss, correct, images) over all processes."""
        x, y = x.to(self.device), y.to(self.device)
        recording = self.diag.step(self.step) if self.diag is not None else contextlib.nullcontext()
        try:
            with recording:
                out = self.net(x)
                loss = F.cross_entropy(out, y)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise self._error(epoch, f"the loss is {value}")
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
        except ValueError as exc:  # a quantizer met NaN/Inf
            raise self._error(epoch, " ".join(str(exc).split())) from exc
        correct = int((out.detach().argmax(1) == y).sum())
        if not self.ctx.active:
            return value, correct, y.numel()
        stop = float(
            self.stop.signum is not None
        )  # agreed in the same reduction: all stop together
        loss_sum, correct_sum, count, stops = parallel.all_sum(
            self.ctx, [value * y.numel(), correct, y.numel(), stop], self.device
        )
        self.stop_agreed = stops > 0
        return loss_sum / count, int(correct_sum), int(count)

    def _evaluate(self, epoch: int) -> bool:
        if not self.ctx.is_main:  # rank 0 evaluates its model (BN statistics are per process)
            return False
        bs = self.cfg.data.eval_batch_size or self.cfg.data.batch_size
        try:
            result = evaluate(
                self.model,
                self.eval_ds,
                bs,
                channels_last=self.cfg.train.channels_last,
                num_workers=self.cfg.data.num_workers,
                device=self.device,
                progress=self.progress,
            )
        except CorruptDataError:
            raise  # a file to fix, not a numerical failure
        except ValueError as exc:
            raise self._error(epoch, "evaluation: " + " ".join(str(exc).split())) from exc
        self.last_eval = {**result, "split": self.cfg.data.eval_split, "epoch": epoch}
        self._row(
            "eval",
            epoch,
            {"loss": result["loss"], "acc": result["acc"], "eval_split": self.cfg.data.eval_split},
            time.perf_counter(),
        )
        self.progress.message(
            f"epoch {epoch} step {self.step}: {self.cfg.data.eval_split} accuracy "
            f"{result['acc']:.4f} loss {result['loss']:.4f} ({result['images']} images)"
        )
        improved = self.best_acc is None or result["acc"] > self.best_acc
        if improved:
            self.best_acc = result["acc"]
        return improved

    def _row(self, kind: str, epoch: int, values: dict[str, Any], now: float) -> None:
        self.metrics.write(
            {
                "kind": kind,
                "epoch": epoch,
                "step": self.step,
                **values,
                "elapsed_s": round(now - self.t0, 3),
            }
        )


class _Silent(Progress):
    """Ranks other than 0 show no progress."""

    def message(self, text: str) -> None:
        pass


class _NoMetrics:
    """Ranks other than 0 write no metrics."""

    def write(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _scheduled_lr_q(lr: float, qcfg: Any) -> float:
    """``QC(lr, k_LR)`` of a scheduled lr, for the metrics. The config refuses a base lr that
    quantizes to 0; a schedule may decay below the grid (the released recipe avoids it, a user's
    may not): then lr_q is 0, QSGD warns once and applies no update, and the run goes on."""
    try:
        return quantized_lr(lr, qcfg)
    except ValueError:  # quantized_lr's only error: a non-zero lr below half an lr step
        return 0.0


def _zeros() -> dict[str, float | int]:
    return {"loss_sum": 0.0, "steps": 0, "correct": 0, "count": 0}
