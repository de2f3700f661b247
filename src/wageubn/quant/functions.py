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
"""

from __future__ import annotations

import numbers

import torch

from .rounding import check_bits, check_finite, pow2_exponent, stochastic_round

__all__ = [
    "clipped_direct_quantize",
    "constant_quantize",
    "direct_quantize",
    "flag_quantize",
    "pow2_scale",
    "shift_quantize",
]


def _q(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Unchecked ``Q(x, k) = round(x·2^(k−1)) / 2^(k−1)``; multiplying by a power of two is exact."""
    scale = float(2 ** (bits - 1))
    return torch.round(x * scale) / scale


def _bound(value: float, x: torch.Tensor) -> float:
    """``value`` rounded toward zero into ``x``'s dtype, so a clip never leaves the range.

    Only matters past the mantissa (float32: k >= 25, where ``1 − 2^(1−k)`` rounds up to 1.0).
    """
    t = torch.tensor(value, dtype=torch.float64).to(x.dtype)
    if abs(float(t)) > abs(value):
        t = torch.nextafter(t, torch.zeros_like(t))
    return float(t)


def direct_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Direct quantization ``Q(x, k) = round(x · 2^(k−1)) / 2^(k−1)``.

    Grid: multiples of ``2^(1−k)``. Range: unbounded (no clipping — "k bits" is ``k−1`` fractional
    bits with an unbounded integer part). Rounding: nearest, ties to even. Used for A, the BN
    quantities, BN gradients, the momentum buffer and weight storage (U).
    """
    bits = check_bits(bits)
    check_finite(x, "direct_quantize input")
    return _q(x, bits)


def clipped_direct_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Clipped direct quantization ``QC(x, k) = clip(Q(x, k), −1 + 2^(1−k), 1 − 2^(1−k))``.

    Grid: multiples of ``2^(1−k)``; range ``±(1 − 2^(1−k))`` (``2^k − 1`` levels, symmetric).
    Rounding: nearest, ties to even. Used for W in the forward pass and for the learning rate.
    """
    bits = check_bits(bits)
    check_finite(x, "clipped_direct_quantize input")
    limit = _bound(1.0 - 2.0 ** (1 - bits), x)
    return _q(x, bits).clamp_(-limit, limit)


def pow2_scale(x: torch.Tensor) -> torch.Tensor:
    """Power-of-two scale ``R(x) = 2^round(log2(max|x|))`` over the whole tensor, as a 0-dim tensor.

    Rounding: nearest in log2 (no ties exist: the boundary ``2^(r+1/2)`` is irrational). An all-zero
    tensor has no scale: ``R`` returns 0 there and every quantizer built on it returns zeros.
    """
    r = pow2_exponent(x, "pow2_scale input")
    if r is None:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    return _scale(x, r)


def _scale(x: torch.Tensor, r: int) -> torch.Tensor:
    """``2^r`` as a 0-dim tensor of ``x``'s dtype (exact: a Python float holds any 2^r we meet)."""
    return torch.tensor(2.0**r, dtype=x.dtype, device=x.device)


def shift_quantize(x: torch.Tensor, bits: int, *, narrow_range: bool = False) -> torch.Tensor:
    """Shift quantization ``SQ(x, k) = R(x) · clip(Q(x / R(x), k), −1, 1)`` (E1).

    Grid: multiples of ``R(x)·2^(1−k)``; range ``±R(x)`` (``2^k + 1`` levels: codes ±2^(k−1)).
    With ``narrow_range=True`` (the ``int8`` mode) the clip is ``±(1 − 2^(1−k))`` so the codes fit
    ``k`` signed bits (±127 for k = 8). Rounding: nearest, ties to even.
    """
    bits = check_bits(bits)
    r = pow2_exponent(x, "shift_quantize input")
    if r is None:
        return torch.zeros_like(x)
    scale = _scale(x, r)
    limit = _bound(1.0 - 2.0 ** (1 - bits), x) if narrow_range else 1.0
    return scale * _q(x / scale, bits).clamp_(-limit, limit)


def flag_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Flag (two-regime) quantization ``FQ(x, k)`` (E2).

    ``s = R(x) / 2^(k−1)``, ``y = x / s``. Elements with ``|y| < 1`` take ``clip(Q(|y|, k), 0, 1)``
    (fine steps of ``s·2^(1−k)``); elements with ``|y| ≥ 1`` take ``clip(round(|y|), 0, 2^(k−1) − 1)``
    (coarse steps of ``s``). Result ``s · sign(y) · that``: "k bits plus a one-bit regime flag",
    dynamic range about ``2^(2(k−1))``. Rounding: nearest, ties to even, in both regimes.
    """
    bits = check_bits(bits)
    r = pow2_exponent(x, "flag_quantize input")
    if r is None:
        return torch.zeros_like(x)
    # s = R / 2^(k−1) may underflow the dtype (tiny R), so scale in two exact steps and multiply by
    # R last: at most one rounding, and only where the exact result itself underflows.
    R = _scale(x, r)
    levels = float(2 ** (bits - 1))
    y = (x / R) * levels
    mag = y.abs()
    fine = _q(mag, bits).clamp_(0.0, 1.0)
    coarse = torch.round(mag).clamp_(0.0, _bound(levels - 1, x))
    return (torch.sign(y) * torch.where(mag < 1.0, fine, coarse) / levels) * R


def check_grad_range(dr: object) -> int:
    """Validate the gradient range ``dr`` of ``constant_quantize``: an integer ``>= 2``."""
    if isinstance(dr, bool) or not isinstance(dr, numbers.Real):
        raise TypeError(f"dr (gradient range) must be an integer >= 2, got {dr!r}")
    if dr != int(dr) or not 2 <= dr <= 2**24:
        raise ValueError(
            f"dr (gradient range) must be an integer in [2, 2^24], got {dr!r}; "
            "the released recipe uses 128, 32, 8, 2"
        )
    return int(dr)


def constant_quantize(
    x: torch.Tensor,
    bits: int,
    dr: int,
    *,
    generator: torch.Generator | None = None,
    rounding: str = "stochastic",
) -> torch.Tensor:
    """Constant quantization ``CQ(x, k, dr) = clip(SR(dr · x / R(x)), −(dr−1), dr−1) · 2^(−2(k−1))`` (G).

    Grid: multiples of the fixed constant ``2^(−2(k−1))`` (``2^−14`` for k = 8), independent of
    ``R(x)`` and ``dr``: only direction and relative size of the gradient survive. Range
    ``±(dr − 1)·2^(−2(k−1))``. Rounding: stochastic (``SR``, unbiased), random numbers from
    ``generator`` (the global generator if ``None``). ``x / R(x)`` is computed first, then times
    ``dr``, as in the released code. ``rounding="nearest"`` replaces ``SR`` by round-half-to-even
    (an ablation; the contract's ``CQ`` is stochastic).
    """
    bits = check_bits(bits)
    dr = check_grad_range(dr)
    if rounding not in ("stochastic", "nearest"):
        raise ValueError(f"rounding must be 'stochastic' or 'nearest', got {rounding!r}")
    r = pow2_exponent(x, "constant_quantize input")
    if r is None:
        return torch.zeros_like(x)
    v = (x / _scale(x, r)) * float(dr)
    n = stochastic_round(v, generator) if rounding == "stochastic" else torch.round(v)
    n = n.clamp_(-(dr - 1), dr - 1)
    return n * float(2.0 ** (-2 * (bits - 1)))
