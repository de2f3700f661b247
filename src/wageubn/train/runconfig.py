"""The run config, importable here as before; it lives in ``wageubn.run`` (``run.config``: the
sections and validation; ``run.overrides``: YAML files and ``--key value`` overrides), below both
the trainer and ``wageubn.deploy`` (which reads checkpoints without importing the trainer)."""

from ..run.config import SECTIONS as _SECTIONS  # noqa: F401 (re-exported)
from ..run.config import (
    DataSection,
    DiagSection,
    DistSection,
    ModelSection,
    OptimSection,
    RunConfig,
    RunConfigError,
    TrainSection,
)
from ..run.overrides import (
    all_keys,
    apply_overrides,
    dump_yaml,
    load_run_config,
    parse_overrides,
)

__all__ = [
    "DataSection",
    "DiagSection",
    "DistSection",
    "ModelSection",
    "OptimSection",
    "RunConfig",
    "RunConfigError",
    "TrainSection",
    "all_keys",
    "apply_overrides",
    "dump_yaml",
    "load_run_config",
    "parse_overrides",
]
