"""wageubn — train PyTorch networks with complete 8-bit integer arithmetic (WAGEUBN).

Yang et al., "Training High-Performance and Large-Scale Deep Neural Networks with Full 8-bit
Integers", Neural Networks 2020 (arXiv:1909.02384). The numerical contract is docs/WAGEUBN.md.
"""

from .config import PRESETS, ROLES, WAGEUBNConfig

__version__ = "0.1.0"

__all__ = ["PRESETS", "ROLES", "WAGEUBNConfig", "__version__"]
