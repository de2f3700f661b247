"""A run's directory: a fresh one for a new run, and its ``run.json`` record.

``new_run_dir`` never writes into another run's files; ``run_record`` is what run.json says about
a run — versions, seed, command, size, then one entry per resume — with ``status`` "running" and
the owning process (``lifecycle.owner_record``: tells a crashed run from a live one). The trainer
writes both (``train/loop.py``).
"""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.version import __version__
from ..run.config import RunConfig, RunConfigError
from ..run.overrides import load_run_config
from .lifecycle import owner_record

__all__ = ["as_run_config", "new_run_dir", "reason", "run_record"]


def reason(exc: OSError) -> str:
    """What went wrong in an ``OSError``, in a few words (``No space left on device``)."""
    return exc.strerror or str(exc) or type(exc).__name__


def as_run_config(config: RunConfig | dict[str, Any] | str | Path) -> RunConfig:
    """``train``'s ``config`` argument as a ``RunConfig`` (a dict is validated, a path loaded)."""
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return RunConfig.from_dict(config)
    if isinstance(config, str | Path):
        return load_run_config(config)
    raise TypeError(f"train: config must be a RunConfig, dict or path, got {type(config).__name__}")


def new_run_dir(cfg: RunConfig) -> Path:
    """A new, empty ``out_dir/run_name`` (``run_name-2``, ``-3`` ... when taken), created; an
    unwritable ``out_dir`` is a ``RunConfigError`` (nothing was written)."""
    base = Path(cfg.train.out_dir).expanduser() / (cfg.train.run_name or "run")
    run_dir, i = base, 1
    try:
        while run_dir.exists() and any(run_dir.iterdir()):
            i += 1
            run_dir = base.with_name(f"{base.name}-{i}")
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # out_dir is a file, read-only, full...
        raise RunConfigError(
            f"train.out_dir {cfg.train.out_dir}: cannot create the run directory {run_dir} "
            f"({reason(exc)}); nothing was written; pass a writable directory with "
            "--train.out_dir DIR"
        ) from None
    return run_dir


def run_record(
    cfg: RunConfig,
    info: dict[str, Any] | None,
    *,
    model: nn.Module,
    steps_per_epoch: int,
    step: int,
    checkpoint: Path | None,
    command: list[str] | None,
    previous_status: str | None,
) -> dict[str, Any]:
    """run.json's content for a run starting now: a new record, or ``info`` (the resumed run's)
    with this resume appended."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    cmd = list(command) if command is not None else list(sys.argv)
    if info is not None:
        resume = {"time": now, "checkpoint": str(checkpoint), "step": step, "command": cmd}
        if previous_status is not None:
            resume["previous_status"] = previous_status
        info.setdefault("resumes", []).append(resume)
    else:
        info = {
            "wageubn": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "seed": cfg.train.seed,
            "command": cmd,
            "started": now,
            "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "steps_per_epoch": steps_per_epoch,
        }
    info["status"] = "running"
    info["owner"] = owner_record()  # tells a crashed run from a live one (lifecycle.py)
    return info
