"""A training run's description and files, read by the trainer, evaluation and deployment alike.

* ``config``     — ``RunConfig``: the YAML run config (model, data, optimizer, training, ...);
* ``checkpoint`` — the checkpoint format (atomic, checksummed writes; safe loading);
* ``model``      — ``build_model(cfg, ...)`` and ``model_from_checkpoint(path)``.

It sits below ``wageubn.train`` and ``wageubn.deploy`` (docs/ARCHITECTURE.md), so that deployment
reads checkpoints without importing the trainer.
"""

from .checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from .config import RunConfig, RunConfigError
from .model import build_model, model_from_checkpoint
from .overrides import load_run_config

__all__ = [
    "CheckpointError",
    "RunConfig",
    "RunConfigError",
    "build_model",
    "load_checkpoint",
    "load_run_config",
    "model_from_checkpoint",
    "resolve_checkpoint",
]
