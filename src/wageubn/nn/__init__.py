"""Layer 3: quantized layers that follow the WAGEUBN data path (docs/WAGEUBN.md §2)."""

from .layers import QuantConv2d, QuantLinear, QuantReLU  # noqa: I001 (batchnorm imports layers)
from .batchnorm import QuantBatchNorm2d
from .quantizers import ROLE_TAG

__all__ = ["ROLE_TAG", "QuantBatchNorm2d", "QuantConv2d", "QuantLinear", "QuantReLU"]
