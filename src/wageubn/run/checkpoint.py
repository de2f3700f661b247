"""Checkpoints: atomic writes, a content checksum, safe loading, one-line errors.

A checkpoint is a dict of tensors and plain Python values (loadable with
``torch.load(path, weights_only=True)``)::

    format            "wageubn-checkpoint"
    version           1
    model             model.state_dict()  (BN running statistics included)
    optimizer         QSGD.state_dict()   (momentum buffers + the stochastic-rounding generator state)
    batches           Batches.state_dict() of the training stream: the next batch to draw
    rng               {"torch": torch.get_rng_state()}  (uint8 tensor)
    epoch, step       the next epoch to run (0-based) and optimizer steps done
    schedule          {"epoch", "lr", "grad_range"} at the time of saving
    accumulators      running sums of the current log window and epoch (so metrics resume exactly)
    best_acc          best eval accuracy so far (None before the first evaluation)
    run_config        RunConfig.to_dict()
    versions          {"wageubn", "torch"}
    checksum          SHA-256 over everything above (bit rot and partial writes are detected)

Writes go to a temporary file in the same directory, are fsync'ed, then ``os.replace``d over the
target, so a crash leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import errno
import hashlib
import io
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..core.files import atomic_write_bytes

__all__ = [
    "FORMAT",
    "CheckpointError",
    "atomic_write_bytes",
    "load_checkpoint",
    "resolve_checkpoint",
    "serialize_checkpoint",
]

FORMAT = "wageubn-checkpoint"
VERSION = 1
_REQUIRED = (
    "model",
    "optimizer",
    "batches",
    "rng",
    "epoch",
    "step",
    "accumulators",
    "run_config",
    "checksum",
)


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or belongs to a different run (one line)."""


def _digest(obj: Any, h: Any) -> None:
    """Feed a canonical encoding of ``obj`` (dicts by sorted key, tensors by raw bytes) to ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _digest(obj[key], h)
    elif isinstance(obj, list | tuple):
        h.update(b"L%d" % len(obj))
        for item in obj:
            _digest(item, h)
    else:
        h.update(repr(obj).encode())


def checksum(payload: dict[str, Any]) -> str:
    h = hashlib.sha256()
    _digest({k: v for k, v in payload.items() if k != "checksum"}, h)
    return h.hexdigest()


def serialize_checkpoint(payload: dict[str, Any]) -> bytes:
    """``payload`` plus format, version and checksum, as the bytes of a ``torch.save`` file."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    payload["checksum"] = checksum(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or ``RUN_DIR/last.pt`` for a run directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = path / "last.pt"
        if not candidate.is_file():
            raise CheckpointError(f"{path}: run directory has no last.pt to resume from")
        return candidate
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return path


def _unreadable(path: Path, exc: Exception) -> str:
    """Our one-line reason for a file that ``torch.load(weights_only=True)`` refused. torch's own
    text is not shown: it advises disabling ``weights_only`` (which would run the file's code) and
    filing issues, neither of which fits a damaged or foreign checkpoint."""
    text = str(exc)
    code = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", text)
    if isinstance(exc, pickle.UnpicklingError) and code:
        return (
            f"{path}: not a wageubn checkpoint: it refers to Python code ({code.group(1)}), which "
            "wageubn checkpoints never do, so it was not loaded; use a checkpoint written by "
            "wageubn train"
        )
    if isinstance(exc, OSError) and exc.strerror and exc.errno != errno.EINVAL:
        return f"{path}: cannot read the checkpoint ({exc.strerror})"  # EINVAL: a cut-off file
    if "zip archive" in text or isinstance(exc, zipfile.BadZipFile | EOFError | OSError):
        what = "not a complete torch.save archive"
    elif isinstance(exc, pickle.UnpicklingError) or "pickle" in text.lower():
        what = "its pickled data is damaged"
    else:
        kind = type(exc)
        name = (
            kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
        )
        what = f"torch.load failed with {name}"
    return (
        f"{path}: truncated or corrupt checkpoint ({what}); resume from an earlier copy or "
        "start the run again"
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and verify a checkpoint (``weights_only=True``: no code runs while loading).

    Raises `CheckpointError` with one line naming the file and the problem.
    """
    path = resolve_checkpoint(path)
    try:
        with warnings.catch_warnings():
            # torch's loader warns about what it meets in a damaged file (pickle protocols...);
            # the error below says what matters, in our words
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged bytes make torch.load fail in many ways (struct.error...)
        raise CheckpointError(_unreadable(path, exc)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a wageubn checkpoint (no format={FORMAT!r} marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')!r} is not supported "
            f"(this wageubn reads version {VERSION})"
        )
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if checksum(payload) != payload["checksum"]:
        raise CheckpointError(
            f"{path}: checksum mismatch, the file is corrupt; resume from an earlier copy "
            "or start the run again"
        )
    return payload
