"""Training: run configs, the loop, checkpoints, metrics and plots (docs/training.md).

>>> from wageubn.train import load_run_config, train
>>> result = train(load_run_config("configs/mnist_cnn_paper.yaml", ["--train.max_steps", "20"]))
"""

from ..run.checkpoint import CheckpointError, load_checkpoint
from ..run.config import RunConfig, RunConfigError
from ..run.overrides import load_run_config
from .loop import (
    TrainingError,
    TrainingInterrupted,
    TrainingIOError,
    evaluate,
    evaluate_checkpoint,
    train,
)
from .schedule import PiecewiseConstant, Schedule

__all__ = [
    "CheckpointError",
    "PiecewiseConstant",
    "RunConfig",
    "RunConfigError",
    "Schedule",
    "TrainingError",
    "TrainingIOError",
    "TrainingInterrupted",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_run_config",
    "train",
]
