"""How a training run stops on an error: `TrainingError` (the run cannot go on) and its subclass
`TrainingIOError` (a file the user fixes), each with a message that names the epoch and step where
it stopped, what happened, the last good checkpoint and how to go on (``stopped``,
``io_stopped``); and ``ending``: for each exception that can leave the loop, the status run.json
records and the error the caller gets instead.
"""

from __future__ import annotations

import errno
import signal
from pathlib import Path

from ..data import CorruptDataError
from . import parallel
from .lifecycle import TrainingInterrupted
from .rundir import reason

__all__ = ["TrainingError", "TrainingIOError", "ending", "io_stopped", "stopped"]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, NaN/Inf reaching a quantizer); names where it
    stopped and the last good checkpoint."""


class TrainingIOError(TrainingError):
    """Training stopped on a file the user fixes: an undecodable data file, or a write that
    failed (disk full, read-only or vanished directory). Names the file, what happened and what
    is saved (the last checkpoint stays intact); the CLI exits with status 2."""


def stopped(
    epoch: int,
    step: int,
    what: str,
    last_good: str | None,
    *,
    kind: type[TrainingError] = TrainingError,
    fix: str = "",
) -> TrainingError:
    """A ``kind`` error: stopped at ``epoch``/``step`` because ``what``; ``last_good`` is the last
    checkpoint written (None: none yet); ``fix`` says what to do (default: the troubleshooting
    guide)."""
    where = last_good or "none (no checkpoint was written yet)"
    return kind(
        f"training stopped at epoch {epoch} step {step}: {what}; last good checkpoint: "
        f"{where}; {fix or 'see docs/troubleshooting.md'}"
    )


def io_stopped(
    epoch: int,
    step: int,
    what: str,
    last_good: str | None,
    run_dir: Path,
    fix: str = "free space or fix the directory",
) -> TrainingError:
    """A `TrainingIOError`: what failed, the intact last checkpoint and how to go on."""
    then = (
        f"then continue with wageubn train --resume {run_dir}"
        if last_good
        else "then start the run again"
    )
    return stopped(epoch, step, what, last_good, kind=TrainingIOError, fix=f"{fix}, {then}")


def ending(
    exc: BaseException,
    *,
    epoch: int,
    step: int,
    last_good: str | None,
    run_dir: Path,
    distributed: bool,
    dist_timeout: float,
) -> tuple[str | None, BaseException | None]:
    """``(status, error)`` for the loop left by ``exc`` at ``epoch``/``step``: the status to
    record in run.json (None: none — an interrupt that saved recorded its own; an exception that
    is not an ``Exception``, e.g. ``SystemExit``, records nothing) and the exception to raise in
    place of ``exc`` (None: ``exc`` itself)."""
    if isinstance(exc, TrainingInterrupted):
        if exc.saved:
            return None, None  # its status is recorded
        name = signal.Signals(exc.signum).name
        return (
            f"interrupted by a second {name} at step {step}; last good checkpoint: {last_good}",
            TrainingInterrupted(
                f"interrupted by a second {name} at epoch {epoch} step {step}, at once; last "
                f"good checkpoint: {last_good}; continue with wageubn train --resume "
                f"{run_dir}",
                exc.signum,
                saved=False,
            ),
        )
    if isinstance(exc, TrainingError):
        return f"failed: {exc}", None
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted at step {step}; last good checkpoint: {last_good}", None
    if isinstance(exc, CorruptDataError):
        fix = "replace or remove that file"
        error = io_stopped(epoch, step, str(exc), last_good, run_dir, fix=fix)
        return f"failed: {error}", error
    if isinstance(exc, OSError):  # metrics, diagnostics or run.json (checkpoints say so themselves)
        what = f"a write to the run directory {run_dir} failed ({reason(exc)})"
        if exc.errno == errno.ENOSPC:
            what = f"the disk holding {run_dir} is full"
        error = io_stopped(epoch, step, what, last_good, run_dir)
        return f"failed: {error}", error
    if isinstance(exc, RuntimeError) and distributed and parallel.is_timeout(exc):
        error = stopped(
            epoch,
            step,
            f"another process did not answer within dist.timeout={dist_timeout:g} s "
            f"({' '.join(str(exc).split())[:200]})",
            last_good,
            fix="check that every process is alive; raise --dist.timeout if rank 0's "
            "evaluation or checkpoint takes longer",
        )
        return f"failed: {error}", error
    if isinstance(exc, Exception):
        return f"crashed at step {step}: {type(exc).__name__}: {exc}", None
    return None, None
