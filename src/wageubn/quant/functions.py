"""The WAGEUBN quantization functions (docs/WAGEUBN.md §1), forward values only.

Grids are fixed point: "k bits" means ``k − 1`` fractional bits, i.e. a value on the k-bit grid
times ``2^(k−1)`` is an integer. ``round`` is round-half-to-even (``torch.round``), as ``tf.round`` in
the released code. Every function:

* keeps the input's dtype and device and works on any shape;
* raises ``ValueError`` for NaN/Inf input and for a bit width outside ``[2, 32]``;
* returns zeros for an all-zero input (the released code divides by zero there).

The per-tensor functions (``shift_quantize``, ``flag_quantize``, ``constant_quantize``) use the
power-of-two scale ``R(x) = 2^round(log2(max|x|))`` computed exactly (see ``rounding.pow2_exponent``).
Gradients: these are plain tensor functions; the straight-through and quantized-backward autograd
wrappers are in ``wageubn.quant.autograd``.

These are the standalone API: they validate their arguments and check for NaN/Inf eagerly (a
host read). The arithmetic itself is that of ``wageubn.quant.device`` (one implementation), which
the layers call directly, without those reads.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from . import device
from .rounding import check_bits, check_finite, finite_minmax, pow2_exponent, round_log2

__all__ = [
    "mul_pow2",
    "clipped_direct_quantize",
    "fit_exponent",
    "fit_exponent_of",
    "fit_quantize",
    "range_exponent",
    "constant_quantize",
    "direct_quantize",
    "flag_quantize",
    "pow2_scale",
    "shift_quantize",
]


def direct_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Direct quantization ``Q(x, k) = round(x · 2^(k−1)) / 2^(k−1)``.

    Grid: multiples of ``2^(1−k)``. Range: unbounded (no clipping — "k bits" is ``k−1`` fractional
    bits with an unbounded integer part). Rounding: nearest, ties to even. Used for A, the BN
    quantities, BN gradients, the momentum buffer and weight storage (U).
    """
    bits = check_bits(bits)
    check_finite(x, "direct_quantize input")
    return device.q_direct(x, bits)


def clipped_direct_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Clipped direct quantization ``QC(x, k) = clip(Q(x, k), −1 + 2^(1−k), 1 − 2^(1−k))``.

    Grid: multiples of ``2^(1−k)``; range ``±(1 − 2^(1−k))`` (``2^k − 1`` levels, symmetric).
    Rounding: nearest, ties to even. Used for W in the forward pass and for the learning rate.
    """
    bits = check_bits(bits)
    check_finite(x, "clipped_direct_quantize input")
    return device.q_clipped(x, bits)


def pow2_scale(x: torch.Tensor) -> torch.Tensor:
    """Power-of-two scale ``R(x) = 2^round(log2(max|x|))`` over the whole tensor, as a 0-dim tensor.

    Rounding: nearest in log2 (no ties exist: the boundary ``2^(r+1/2)`` is irrational). An all-zero
    tensor has no scale: ``R`` returns 0 there and every quantizer built on it returns zeros.
    """
    r = pow2_exponent(x, "pow2_scale input")
    if r is None:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    # 2^r as a 0-dim tensor of x's dtype (exact: a Python float holds every 2^r met here)
    return torch.tensor(2.0**r, dtype=x.dtype, device=x.device)


def mul_pow2(x: torch.Tensor, e: int) -> torch.Tensor:
    """``x · 2^e`` (a new tensor), exact unless the result itself under- or overflows.

    ``2^e`` is applied in pieces that the dtype can hold, largest-magnitude-preserving step first,
    so that at most the last multiplication rounds.
    """
    info = torch.finfo(x.dtype)
    lo, hi = int(math.log2(info.tiny)), int(math.log2(info.max))
    steps = []
    while e > hi:
        steps.append(hi)
        e -= hi
    while e < lo:
        steps.append(lo)
        e -= lo
    y = x * float(2.0**e)  # the in-range remainder first: exact
    for step in steps:
        y.mul_(float(2.0**step))
    return y


def shift_quantize(x: torch.Tensor, bits: int, *, narrow_range: bool = False) -> torch.Tensor:
    """Shift quantization ``SQ(x, k) = R(x) · clip(Q(x / R(x), k), −1, 1)`` (E1).

    Grid: multiples of ``R(x)·2^(1−k)``; range ``±R(x)`` (``2^k + 1`` levels: codes ±2^(k−1)).
    With ``narrow_range=True`` (the ``int8`` mode) the clip is ``±(1 − 2^(1−k))`` so the codes fit
    ``k`` signed bits (±127 for k = 8). Rounding: nearest, ties to even.
    """
    bits = check_bits(bits)
    check_finite(x, "shift_quantize input")
    return device.q_shift(x, bits, narrow_range)[0]


def flag_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Flag (two-regime) quantization ``FQ(x, k)`` (E2).

    ``s = R(x) / 2^(k−1)``, ``y = x / s``. Elements with ``|y| < 1`` take ``clip(Q(|y|, k), 0, 1)``
    (fine steps of ``s·2^(1−k)``); elements with ``|y| ≥ 1`` take ``clip(round(|y|), 0, 2^(k−1) − 1)``
    (coarse steps of ``s``). Result ``s · sign(y) · that``: "k bits plus a one-bit regime flag",
    dynamic range about ``2^(2(k−1))``. Rounding: nearest, ties to even, in both regimes.
    """
    bits = check_bits(bits)
    check_finite(x, "flag_quantize input")
    return device.q_flag(x, bits)[0]


def range_exponent(x: torch.Tensor, bits: int) -> int | None:
    """The smallest ``e`` with ``max|x| <= (2^(k−1) − 1) · 2^e`` (``None`` for an all-zero tensor):
    the finest power-of-two grid whose ``k``-bit signed codes hold ``x`` without saturation."""
    bits = check_bits(bits)
    lo, hi = finite_minmax(x, "range_exponent input")
    return range_exponent_of(max(hi, -lo), bits)


def range_exponent_of(amax: float, bits: int) -> int | None:
    """``range_exponent`` from a known ``max|x|``."""
    r = round_log2(amax)
    if r is None:
        return None
    top = float(2 ** (bits - 1) - 1)
    e = r - bits  # max|x| >= 2^(r−1/2) > top·2^(r−k): too small; walk up (at most three steps)
    while amax > top * 2.0**e:
        e += 1
    return e


def fit_exponent(x: torch.Tensor, bits: int) -> int:
    """The ``int8``-mode exponent of A (§6): ``max(range_exponent(x, k), 1 − k)`` — no saturation,
    and never finer than the paper's ``2^(1−k)`` grid (where that grid fits, it is used)."""
    lo, hi = finite_minmax(x, "fit_exponent input")
    return fit_exponent_of(max(hi, -lo), check_bits(bits))


def fit_exponent_of(amax: float, bits: int) -> int:
    """``fit_exponent`` from a known ``max|x|``."""
    e = range_exponent_of(amax, bits)
    return 1 - bits if e is None else max(e, 1 - bits)


def fit_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """A in ``int8`` mode: ``round(x / 2^e) · 2^e`` with ``e = fit_exponent(x, k)``.

    Equals ``Q(x, k)`` whenever ``max|x| <= 1 − 2^(1−k)``; above that the grid coarsens by powers of
    two instead of leaving the ``k``-bit code range. Rounding: nearest, ties to even.
    """
    bits = check_bits(bits)
    check_finite(x, "fit_quantize input")
    codes, e, _ = device.q_fit(x, bits)
    return device.decode(codes, e, x.dtype)


def check_grad_range(dr: object) -> int:
    """Validate the gradient range ``dr`` of ``constant_quantize``: an integer ``>= 2``."""
    if isinstance(dr, bool) or not isinstance(dr, numbers.Real):
        raise TypeError(f"dr (gradient range) must be an integer >= 2, got {dr!r}")
    value: Any = dr  # a real number (numbers.Real declares no int() or comparison)
    if value != int(value) or not 2 <= value <= 2**24:
        raise ValueError(
            f"dr (gradient range) must be an integer in [2, 2^24], got {dr!r}; "
            "the released recipe uses 128, 32, 8, 2"
        )
    return int(value)


def constant_quantize(
    x: torch.Tensor,
    bits: int,
    dr: int,
    *,
    generator: torch.Generator | None = None,
    rounding: str = "stochastic",
    scale: str = "tensor",
) -> torch.Tensor:
    """Constant quantization ``CQ(x, k, dr) = clip(SR(dr · x / R(x)), −(dr−1), dr−1) · 2^(−2(k−1))`` (G).

    Grid: multiples of the fixed constant ``2^(−2(k−1))`` (``2^−14`` for k = 8), independent of
    ``R(x)`` and ``dr``: only direction and relative size of the gradient survive. Range
    ``±(dr − 1)·2^(−2(k−1))``. Rounding: stochastic (``SR``, unbiased), random numbers from
    ``generator`` (the global generator if ``None``). ``x / R(x)`` is computed first, then times
    ``dr``, as in the released code. ``rounding="nearest"`` replaces ``SR`` by round-half-to-even
    (an ablation; the contract's ``CQ`` is stochastic). ``scale="channel"`` (beyond the paper,
    ``WAGEUBNConfig.grad_scale``) takes one ``R`` per slice ``x[i]`` along dim 0 — ``CQ(x[i])``
    for each output channel — where ``x`` has 2 or more dims.
    """
    bits = check_bits(bits)
    dr = check_grad_range(dr)
    if rounding not in ("stochastic", "nearest"):
        raise ValueError(f"rounding must be 'stochastic' or 'nearest', got {rounding!r}")
    if scale not in ("tensor", "channel"):
        raise ValueError(f"scale must be 'tensor' or 'channel', got {scale!r}")
    check_finite(x, "constant_quantize input")
    return device.q_constant(x, bits, dr, generator=generator, rounding=rounding, scale=scale)
