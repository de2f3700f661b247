"""Autograd building blocks: where a quantizer sits decides which direction it acts on.

* ``quantize_forward(x, fn)`` — forward ``fn(x)``, backward the identity (straight-through
  estimator). Used for W, A and every BN quantity (docs/WAGEUBN.md §2: "all forward quantizers pass
  the gradient straight through").
* ``quantize_backward(x, fn)`` — forward the identity, backward ``fn(dL/dx)``. Used for the errors:
  E1 after a quantized activation (the gradient summed over all consumers arrives here at once) and
  E2 on the output of every quantized conv/linear.

``fn`` is any ``Tensor -> Tensor`` callable (typically a ``functools.partial`` of a function in
``wageubn.quant.functions``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["quantize_backward", "quantize_forward"]

Quantizer = Callable[[torch.Tensor], torch.Tensor]


class _QuantizeForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Quantizer) -> torch.Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _QuantizeBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Quantizer) -> torch.Tensor:
        ctx.fn = fn
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        return ctx.fn(grad), None


def quantize_forward(x: torch.Tensor, fn: Quantizer) -> torch.Tensor:
    """``fn(x)`` in the forward pass; the gradient passes straight through (``dL/dx = dL/dy``)."""
    if not x.requires_grad:
        return fn(x)
    return _QuantizeForward.apply(x, fn)


def quantize_backward(x: torch.Tensor, fn: Quantizer) -> torch.Tensor:
    """``x`` unchanged in the forward pass; the incoming gradient is replaced by ``fn(dL/dy)``."""
    if not x.requires_grad:
        return x
    return _QuantizeBackward.apply(x, fn)
