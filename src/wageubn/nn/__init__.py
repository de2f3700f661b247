"""Layer 3: quantized layers that follow the WAGEUBN data path (docs/WAGEUBN.md §2)."""

from .layers import QuantConv2d, QuantLinear, QuantReLU  # noqa: I001 (batchnorm imports layers)
from .batchnorm import QuantBatchNorm2d
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
from .blocks import QuantCNBlock
from .norms import QuantBatchNorm1d, QuantGroupNorm, QuantLayerNorm, QuantLayerNorm2d
from .products import QuantConv1d, QuantEmbedding
from .quantizers import ROLE_TAG
from .swin import QuantShiftedWindowAttention, QuantShiftedWindowAttentionV2

__all__ = [
    "ROLE_TAG",
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
    "QuantMultiheadAttention",
    "QuantReLU",
    "QuantReLU6",
    "QuantShiftedWindowAttention",
    "QuantShiftedWindowAttentionV2",
    "QuantSiLU",
    "QuantSigmoid",
    "QuantTanh",
]
