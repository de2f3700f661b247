"""wageubn — train PyTorch networks with complete 8-bit integer arithmetic (WAGEUBN).

Yang et al., "Training High-Performance and Large-Scale Deep Neural Networks with Full 8-bit
Integers", Neural Networks 2020 (arXiv:1909.02384). The numerical contract is docs/WAGEUBN.md.

>>> import wageubn
>>> model = wageubn.models.create_model("small_cnn")
>>> model = wageubn.quantize_(model, wageubn.WAGEUBNConfig.preset("paper"))
>>> opt = wageubn.QSGD.from_model(model, lr=0.05)  # param groups by role, the model's config
>>> wageubn.config_of(model).name
'paper'
"""

from typing import Any

from . import models, nn, optim, quant
from .config import PRESETS, ROLES, WAGEUBNConfig
from .convert import UnsupportedModuleError, config_of, quantize_, to_float_
from .core.version import __version__
from .optim import QSGD

__all__ = [
    "PRESETS",
    "QSGD",
    "ROLES",
    "UnsupportedModuleError",
    "WAGEUBNConfig",
    "__version__",
    "ablate",
    "config_of",
    "models",
    "nn",
    "optim",
    "quant",
    "quantize_",
    "to_float_",
]


def __getattr__(name: str) -> Any:
    # wageubn.ablate lives with the training loop, which importing wageubn does not load
    if name == "ablate":
        from .train.ablation import ablate

        return ablate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
