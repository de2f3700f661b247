"""Layer 1: pure tensor math of WAGEUBN — rounding, grids, ``R(x)``, the quantizers, autograd wrappers.

The six functions of the numerical contract (docs/WAGEUBN.md §1):

=========================  =====  ===========================================================
``direct_quantize``        Q      A, BN quantities, BN gradients, momentum, weight storage (U)
``clipped_direct_quantize`` QC    W (forward), learning rate
``pow2_scale``             R      scale of E1, E2, G
``shift_quantize``         SQ     E1
``flag_quantize``          FQ     E2
``constant_quantize``      CQ     G of quantized conv/linear weights (stochastic rounding)
=========================  =====  ===========================================================
"""

from .autograd import quantize_backward, quantize_forward
from .codes import IntTensor, decode, encode, min_exponent
from .functions import (
    check_grad_range,
    clipped_direct_quantize,
    constant_quantize,
    direct_quantize,
    fit_exponent,
    fit_quantize,
    flag_quantize,
    mul_pow2,
    pow2_scale,
    range_exponent,
    shift_quantize,
)
from .rounding import check_bits, check_finite, pow2_exponent, stochastic_round

__all__ = [
    "IntTensor",
    "check_bits",
    "check_finite",
    "check_grad_range",
    "clipped_direct_quantize",
    "constant_quantize",
    "decode",
    "direct_quantize",
    "encode",
    "fit_exponent",
    "fit_quantize",
    "range_exponent",
    "flag_quantize",
    "min_exponent",
    "mul_pow2",
    "pow2_exponent",
    "pow2_scale",
    "quantize_backward",
    "quantize_forward",
    "shift_quantize",
    "stochastic_round",
]
