"""The checkpoint format, importable here as before; it lives in ``wageubn.run.checkpoint``, below
both the trainer and ``wageubn.deploy`` (which reads checkpoints without importing the trainer)."""

from ..run.checkpoint import (
    FORMAT,
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    resolve_checkpoint,
    serialize_checkpoint,
)

__all__ = [
    "FORMAT",
    "CheckpointError",
    "atomic_write_bytes",
    "load_checkpoint",
    "resolve_checkpoint",
    "serialize_checkpoint",
]
