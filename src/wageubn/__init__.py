"""wageubn — train PyTorch networks with complete 8-bit integer arithmetic (WAGEUBN).

Yang et al., "Training High-Performance and Large-Scale Deep Neural Networks with Full 8-bit
Integers", Neural Networks 2020 (arXiv:1909.02384). The numerical contract is docs/WAGEUBN.md.

>>> import wageubn
>>> model = wageubn.models.create_model("small_cnn")
>>> model = wageubn.quantize_(model, wageubn.WAGEUBNConfig.preset("paper"))
>>> opt = wageubn.optim.QSGD(model.parameters(), lr=0.05, config=model._wageubn_config)
"""

from typing import Any

from . import models, nn, optim, quant
from .config import PRESETS, ROLES, WAGEUBNConfig
from .convert import UnsupportedModuleError, quantize_, to_float_
from .optim import QSGD

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "QSGD",
    "ROLES",
    "UnsupportedModuleError",
    "WAGEUBNConfig",
    "__version__",
    "ablate",
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
