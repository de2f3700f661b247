"""What a resume may change: the run-config keys that can differ from the checkpoint's, the check
that nothing else does, the check that a resume would train and race no live process, and the
saved run config with overrides (``wageubn train --resume``).

A resumed run continues bit for bit like an uninterrupted one only if everything that decides
the numbers is the checkpoint's own: model, data, optimizer, quantization, seed. Keys that only
decide how long the run goes, where it writes or how it reports are ``RESUMABLE_KEYS``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..run.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from ..run.config import RunConfig, RunConfigError
from ..run.overrides import apply_overrides, parse_overrides
from .lifecycle import describe_status, read_run_info

__all__ = [
    "RESUMABLE_KEYS",
    "check_compatible",
    "check_resumable",
    "config_from_checkpoint",
    "flatten",
    "recipe_differences",
]

log = logging.getLogger("wageubn.train")

# Keys that may differ between a checkpoint's run config and the config it is resumed with.
RESUMABLE_KEYS = frozenset(
    {
        "train.epochs",
        "train.max_steps",
        "train.log_every",
        "train.threads",
        "train.tensorboard",
        "train.checkpoint_every_steps",
        "train.eval_every_epochs",
        "diag.every",
        "train.out_dir",
        "train.run_name",
        "data.root",
        "data.num_workers",
        "data.eval_batch_size",
        "dist.timeout",
    }
)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A run config's dict as ``{"section.key": value}`` (``model.kwargs`` kept whole)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipe_differences(
    cfg: RunConfig, saved: dict[str, Any], also: tuple[str, ...] = ()
) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, cfg's value)`` for every key outside ``RESUMABLE_KEYS`` (and every
    key of ``also``) on which ``cfg`` and the saved run config dict ``saved`` differ, sorted."""
    now, then = flatten(cfg.to_dict()), flatten(saved)
    return [
        (k, then.get(k), now.get(k))
        for k in sorted(set(now) | set(then))
        if (k not in RESUMABLE_KEYS or k in also) and now.get(k) != then.get(k)
    ]


def check_compatible(cfg: RunConfig, saved: dict[str, Any], path: Path) -> None:
    """Raise ``CheckpointError`` listing every key outside ``RESUMABLE_KEYS`` on which ``cfg``
    and the checkpoint's run config ``saved`` differ."""
    diffs = [
        f"{k} {then!r} (checkpoint) vs {now!r} (now)"
        for k, then, now in recipe_differences(cfg, saved)
    ]
    if diffs:
        raise CheckpointError(
            f"{path}: written by a different run config: {'; '.join(diffs)}; resume with the "
            "run's own config (omit CONFIG) or start a new run"
        )


def check_resumable(
    cfg: RunConfig,
    path: Path,
    run_dir: Path,
    *,
    step: int,
    epoch: int,
    steps_per_epoch: int,
    is_main: bool,
) -> str | None:
    """Refuse a resume that would do nothing or race a live process (before any write).

    ``step`` and ``epoch`` are the restored position of checkpoint ``path`` in ``run_dir``.
    Returns the status of a previous process that left run.json "running" and is gone (warned
    about on the main process), else None."""
    t = cfg.train
    if t.max_steps is not None and step >= t.max_steps and epoch < t.epochs:
        raise RunConfigError(
            f"{path}: the run is at step {step}, which train.max_steps={t.max_steps} "
            f"does not exceed, with {t.epochs * steps_per_epoch - step} steps of "
            f"train.epochs={t.epochs} left; to continue pass --train.max_steps N with "
            f"N > {step}, or --train.max_steps null for the remaining epochs"
        )
    info = read_run_info(run_dir / "run.json")
    if info is None:
        return None
    status, running = describe_status(info)
    if running:
        raise CheckpointError(
            f"{run_dir}: run.json says the run is {status}; wait for it to finish or "
            "stop it (kill -TERM PID writes a checkpoint) before resuming"
        )
    if info.get("status") != "running":
        return None
    if is_main:
        log.warning("%s: the previous run %s; resuming from %s", run_dir, status, path)
    return status


def config_from_checkpoint(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The run config saved in a checkpoint, with dotted ``overrides`` applied."""
    ckpt = load_checkpoint(path)
    values = apply_overrides(ckpt["run_config"], parse_overrides(overrides or []))
    return RunConfig.from_dict(values, source=f"{resolve_checkpoint(path)} run_config")
