"""What a run writes to its directory besides checkpoints, on rank 0 only: the directory itself
(``shared_run_dir``: a new one, named to every rank), ``config.yaml`` and ``run.json`` at the
start, the metrics rows and diagnostics during the run, and the status in run.json at its end
(``RunFiles``). The other ranks hold a ``RunFiles`` that writes nothing. The checkpoints
themselves are the loop's (``train/loop.py``, ``train/snapshot.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..core.files import atomic_write_bytes
from ..run.config import RunConfig, RunConfigError
from ..run.overrides import dump_yaml
from . import parallel
from .errors import TrainingIOError
from .lifecycle import read_run_info, write_run_info
from .metrics import MetricsWriter, NoMetrics
from .rundir import new_run_dir, reason, run_record

if TYPE_CHECKING:
    from ..diagnostics import Diagnostics

__all__ = ["RunFiles", "shared_run_dir"]

log = logging.getLogger("wageubn.train")


def shared_run_dir(cfg: RunConfig, ctx: parallel.DistContext) -> Path:
    """A new run directory (``new_run_dir``), made by rank 0 and named to every rank; when it
    cannot be made every rank raises the same ``RunConfigError`` (rank 0 prints it)."""
    made: Any = None
    if ctx.is_main:
        try:
            made = str(new_run_dir(cfg))
        except RunConfigError as exc:
            made = exc
    made = parallel.broadcast(ctx, made)
    if isinstance(made, RunConfigError):
        raise made
    return Path(made)


class RunFiles:
    """The files of the run in ``run_dir`` that are not checkpoints (``is_main``: this process
    writes them)."""

    def __init__(self, run_dir: Path, *, is_main: bool) -> None:
        self.run_dir, self.is_main = run_dir, is_main
        self.info_path = run_dir / "run.json"
        self.info: dict[str, Any] | None = None  # run.json's content once written
        self.metrics: MetricsWriter | NoMetrics = NoMetrics()
        self.diag: Diagnostics | None = None

    def open(
        self,
        cfg: RunConfig,
        ctx: parallel.DistContext,
        *,
        model: nn.Module,
        steps_per_epoch: int,
        step: int,
        checkpoint: Path | None,
        command: list[str] | None,
        previous_status: str | None,
    ) -> None:
        """Write config.yaml and run.json (a new record, or the resumed run's with this resume
        from ``checkpoint`` appended), open the metrics files and the diagnostics. A write that
        fails stops every rank with a `TrainingIOError`: nothing was trained."""
        failed: TrainingIOError | None = None
        if self.is_main:
            try:
                self._write_start(
                    cfg, model, steps_per_epoch, step, checkpoint, command, previous_status
                )
                self.metrics = MetricsWriter(
                    self.run_dir,
                    keep_until_step=step if checkpoint is not None else None,
                    tensorboard=cfg.train.tensorboard,
                )
                if cfg.diag.every is not None:
                    from ..diagnostics import Diagnostics

                    self.diag = Diagnostics(
                        model,
                        every=cfg.diag.every,
                        path=self.run_dir / "diagnostics.jsonl",
                        sink=self.metrics.diagnostics if cfg.train.tensorboard else None,
                    )
            except OSError as exc:
                kept = (
                    f"{checkpoint} (step {step}) and the run's files are unchanged; make the "
                    "directory writable, or copy it elsewhere and resume from the copy"
                    if checkpoint is not None
                    else "pass a writable --train.out_dir"
                )
                failed = TrainingIOError(
                    f"cannot write to the run directory {self.run_dir} ({reason(exc)}); "
                    f"nothing was trained; {kept}"
                )
        failed = parallel.broadcast(ctx, failed)  # every rank stops, not only rank 0
        if failed is not None:
            raise failed

    def _write_start(
        self,
        cfg: RunConfig,
        model: nn.Module,
        steps_per_epoch: int,
        step: int,
        checkpoint: Path | None,
        command: list[str] | None,
        previous_status: str | None,
    ) -> None:
        atomic_write_bytes(self.run_dir / "config.yaml", dump_yaml(cfg).encode())
        self.info = run_record(
            cfg,
            read_run_info(self.info_path) if checkpoint is not None else None,
            model=model,
            steps_per_epoch=steps_per_epoch,
            step=step,
            checkpoint=checkpoint,
            command=command,
            previous_status=previous_status,
        )
        write_run_info(self.info_path, self.info)

    def set_status(self, status: str) -> None:
        """Record ``status`` in run.json (a failed write is a warning: run.json then keeps
        "running", which the owner check of the next resume sees)."""
        if not self.is_main or self.info is None:
            return
        self.info["status"] = status
        try:
            write_run_info(self.info_path, self.info)
        except OSError as exc:
            log.warning("%s: could not record status %r (%s)", self.info_path, status, exc)

    def close(self) -> None:
        """Close the metrics files (a failure is a warning: the rows are flushed as written)."""
        try:
            self.metrics.close()
        except OSError as exc:
            log.warning("%s: closing the metrics files failed (%s)", self.run_dir, exc)
