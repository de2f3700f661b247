"""Layer 3: quantized layers that follow the WAGEUBN data path (docs/WAGEUBN.md §2; the layers of
the package: docs/ARCHITECTURE.md)."""

from ..core.roles import QuantModule
from .activations import (
    QuantActivation,
    QuantGELU,
    QuantHardsigmoid,
    QuantHardswish,
    QuantLeakyReLU,
    QuantReLU6,
    QuantSigmoid,
    QuantSiLU,
    QuantTanh,
)
from .attention import QuantMultiheadAttention
from .batchnorm import QuantBatchNorm2d
from .blocks import QuantCNBlock
from .layers import QuantConv2d, QuantLinear, QuantReLU  # noqa: I001 (batchnorm imports layers)
from .norms import QuantBatchNorm1d, QuantGroupNorm, QuantLayerNorm, QuantLayerNorm2d
from .products import QuantConv1d, QuantEmbedding
from .swin import QuantShiftedWindowAttention, QuantShiftedWindowAttentionV2

__all__ = [
    "QuantActivation",
    "QuantBatchNorm1d",
    "QuantBatchNorm2d",
    "QuantCNBlock",
    "QuantConv1d",
    "QuantConv2d",
    "QuantEmbedding",
    "QuantGELU",
    "QuantGroupNorm",
    "QuantHardsigmoid",
    "QuantHardswish",
    "QuantLayerNorm",
    "QuantLayerNorm2d",
    "QuantLeakyReLU",
    "QuantLinear",
    "QuantModule",
    "QuantMultiheadAttention",
    "QuantReLU",
    "QuantReLU6",
    "QuantShiftedWindowAttention",
    "QuantShiftedWindowAttentionV2",
    "QuantSiLU",
    "QuantSigmoid",
    "QuantTanh",
]
