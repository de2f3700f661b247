"""Quantized counterparts of torchvision blocks that hold parameters of their own.

* ``QuantCNBlock`` — ConvNeXt's ``CNBlock``: ``out = input + drop_path(Q(layer_scale, k_γ) ·
  block(input))``. The layer scale is a per-channel multiplier like BN's γ: it enters the product
  on γ's grid (``bn_gamma`` bits, straight-through) and its gradient is quantized by ``QSGD`` as
  γ's (role ``"bn"``: ``Q(g, 15)``, no weight decay). The children (depthwise conv, LayerNorm,
  linears, GELU) are converted by ``quantize_`` as everywhere else; the residual sum stays float.

torchvision is not imported here: ``quantize_`` registers these classes when the torchvision
module that defines the float block has been imported (the block can only occur in a model then).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import WAGEUBNConfig
from ..core.observe import tap
from ..core.roles import QuantModule, release
from .layers import _check_config
from .quantizers import forward_q

__all__ = ["QuantCNBlock"]


class QuantCNBlock(QuantModule, nn.Module):
    """torchvision's ConvNeXt ``CNBlock`` with its layer scale on the BN γ grid."""

    PARAM_ROLES = {"layer_scale": "bn"}  # QSGD: Q(g, 15) gradient, no weight decay

    def __init__(
        self,
        layer_scale: nn.Parameter,
        block: nn.Module,
        stochastic_depth: nn.Module,
        *,
        config: WAGEUBNConfig | None = None,
    ) -> None:
        super().__init__()
        self.block = block
        self.layer_scale = layer_scale
        self.stochastic_depth = stochastic_depth
        self.config = _check_config(config or WAGEUBNConfig())

    @classmethod
    def from_float(cls, mod: Any, config: WAGEUBNConfig) -> QuantCNBlock:  # torchvision's CNBlock
        """A quantized block holding ``mod``'s parameter and children (the same objects)."""
        new = cls(mod.layer_scale, mod.block, mod.stochastic_depth, config=config)
        return new.train(mod.training)

    def to_float(self) -> nn.Module:
        from torchvision.models.convnext import CNBlock

        new = CNBlock.__new__(CNBlock)
        nn.Module.__init__(new)
        new.block, new.layer_scale = self.block, self.layer_scale
        new.stochastic_depth = self.stochastic_depth
        release(self)  # CNBlock declares no roles: layer_scale is float from now on
        return new.train(self.training)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        scale = forward_q(self.layer_scale, self.config.bn_gamma, tap(self), "bn_gamma")
        result = scale * self.block(input)
        result = self.stochastic_depth(result)
        result += input
        return result

    def extra_repr(self) -> str:
        return f"layer_scale={self.config.bn_gamma}"
