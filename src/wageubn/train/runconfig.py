"""The run config, importable here as before; it lives in ``wageubn.run.config``, below both the
trainer and ``wageubn.deploy`` (which reads checkpoints without importing the trainer)."""

from ..run.config import (  # noqa: F401 (re-exported)
    _SECTIONS,
    DataSection,
    DiagSection,
    DistSection,
    ModelSection,
    OptimSection,
    RunConfig,
    RunConfigError,
    TrainSection,
    all_keys,
    apply_overrides,
    dump_yaml,
    load_run_config,
    parse_overrides,
)

__all__ = [
    "DataSection",
    "ModelSection",
    "OptimSection",
    "RunConfig",
    "RunConfigError",
    "TrainSection",
    "load_run_config",
    "parse_overrides",
]
