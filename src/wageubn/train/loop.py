"""The training loop: ``train(run_config) -> result``.

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

This module holds the loop and the checkpoint writes; around it: ``train/prepare.py`` (what a run
is built from, the resumed position, the run directory), ``train/snapshot.py`` (a checkpoint's
content), ``train/runfiles.py`` (config.yaml, run.json, metrics), ``train/errors.py`` (how a run
stops), ``train/evaluate.py`` (``evaluate``, ``evaluate_checkpoint``) and ``train/resume.py``;
their public names stay importable from here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.progress import LogProgress, Progress
from ..data import CorruptDataError
from ..run.checkpoint import (
    atomic_write_bytes,
    load_checkpoint,
    resolve_checkpoint,
    serialize_checkpoint,
)
from ..run.config import RunConfig
from . import parallel
from .errors import TrainingError, TrainingIOError, ending, io_stopped, stopped
from .evaluate import evaluate, evaluate_checkpoint
from .lifecycle import StopSignals, TrainingInterrupted
from .metrics import new_accumulator
from .prepare import RunSetup
from .resume import RESUMABLE_KEYS, check_compatible, config_from_checkpoint
from .rundir import as_run_config, reason
from .schedule import scheduled_lr_q
from .snapshot import checkpoint_payload, non_finite

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
            progress = parallel.SilentProgress()
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


class _Run(RunSetup):
    """The epoch/step loop of one run, on what `RunSetup` built, and its checkpoints."""

    # -- checkpoints ----------------------------------------------------------------------------
    def _save(self, epoch: int, *, best: bool = False) -> None:
        if not self.ctx.is_main:
            self.last_good = f"{self.last_path} (step {self.step})"
            return
        model_state, opt_state = self.model.state_dict(), self.opt.state_dict()
        bad = non_finite(model_state, opt_state)
        if bad is not None:  # never replace a good checkpoint with a bad state
            raise self._error(epoch, f"{bad} is not finite (not saved)")
        payload = checkpoint_payload(
            model_state=model_state,
            opt_state=opt_state,
            batches=self.batches,
            step=self.step,
            schedule_state=self.schedule.state_dict(epoch),
            accumulators=self.acc,
            best_acc=self.best_acc,
            last_eval=self.last_eval,
            elapsed_s=time.perf_counter() - self.t0,
            run_config=self.cfg.to_dict(),
            world_size=self.ctx.world,
        )
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
        return stopped(epoch, self.step, what, self.last_good, kind=kind, fix=fix)

    def _io_error(
        self, epoch: int, what: str, fix: str = "free space or fix the directory"
    ) -> TrainingError:
        return io_stopped(epoch, self.step, what, self.last_good, self.run_dir, fix)

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
        except BaseException as exc:
            status, error = ending(
                exc,
                epoch=epoch,
                step=self.step,
                last_good=self.last_good,
                run_dir=self.run_dir,
                distributed=self.ctx.active,
                dist_timeout=self.cfg.dist.timeout,
            )
            if status is not None:
                self.files.set_status(status)
            if error is None:
                raise
            raise error from None
        finally:
            self.progress.close()
            self.files.close()
        done = self.batches.state_dict()["epoch"] >= t.epochs
        status = "completed" if done else f"stopped at max_steps={t.max_steps}"
        self.files.set_status(status)
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
        self.files.set_status(f"interrupted by {name} at step {self.step}; saved {self.last_good}")
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
        lr_q = scheduled_lr_q(lr, self.qcfg)
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
                self.acc["window"] = new_accumulator()
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
        self.acc["epoch"] = new_accumulator()
        best = False
        if (epoch + 1) % t.eval_every_epochs == 0 or epoch + 1 == t.epochs or self.step >= total:
            best = self._evaluate(epoch)
        self._save(epoch, best=best)
        return True

    def _step(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[float, int, int]:
        """One optimizer step; returns (mean loss, correct, images) over all processes."""
        x, y = x.to(self.device), y.to(self.device)
        recording = (
            self.files.diag.step(self.step)
            if self.files.diag is not None
            else contextlib.nullcontext()
        )
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
        self.files.metrics.write(
            {
                "kind": kind,
                "epoch": epoch,
                "step": self.step,
                **values,
                "elapsed_s": round(now - self.t0, 3),
            }
        )
