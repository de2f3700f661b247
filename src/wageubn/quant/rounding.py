"""Rounding primitives shared by every WAGEUBN quantizer.

* ``check_bits`` / ``check_finite`` — the contract's input validation (docs/WAGEUBN.md §7).
* ``pow2_exponent`` — the integer ``r`` of ``R(x) = 2^r = 2^round(log2(max|x|))``, computed exactly
  from the float's mantissa and exponent instead of through a float ``log2`` (which can round the
  wrong way within one ulp of the ``2^(r+1/2)`` boundary).
* ``stochastic_round`` — ``SR(v)``: ``floor(v) + 1`` with probability ``v - floor(v)``, drawn from an
  explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "check_bits",
    "check_finite",
    "finite_minmax",
    "pow2_exponent",
    "round_log2",
    "stochastic_round",
]

MIN_BITS = 2
MAX_BITS = 32

# log2(m) >= -1/2  <=>  m >= sqrt(1/2).  sqrt(1/2) is irrational, so no float mantissa equals it and
# there are no ties; the float64 constant lies 2.5e-17 above the true value, closer than any
# float32 or float64 mantissa can come, so ">" against it is exact.
_SQRT_HALF = math.sqrt(0.5)


def check_bits(bits: object, name: str = "bits") -> int:
    """Validate a bit width: an ``int`` (not ``bool``) in ``[2, 32]``; returns it.

    Raises ``TypeError`` for a non-integer and ``ValueError`` for a value outside the range.
    """
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(
            f"{name} must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r} "
            f"({type(bits).__name__}); pass e.g. {name}=8"
        )
    bits = int(bits)
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f"{name} must be in [{MIN_BITS}, {MAX_BITS}], got {bits}; "
            f"use None in WAGEUBNConfig to keep a role in float"
        )
    return bits


def check_finite(x: torch.Tensor, what: str = "input") -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf (contract §1: never quantize them silently)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())  # one pass, no temporary; both propagate NaN
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(
            f"{what} of shape {tuple(x.shape)} contains {n_nan} NaN and {n_inf} Inf values; "
            "WAGEUBN quantizers only accept finite tensors — lower the learning rate or check "
            "the data for NaN"
        )


def finite_minmax(x: torch.Tensor, what: str = "input") -> tuple[float, float]:
    """``(min x, max x)`` in one pass, raising ``ValueError`` on NaN/Inf; ``(0, 0)`` if empty."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        check_finite(x, what)  # raises the TypeError
    if x.numel() == 0:
        return 0.0, 0.0
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        check_finite(x, what)
    return lo, hi


def pow2_exponent(x: torch.Tensor, what: str = "input") -> int | None:
    """The integer ``r`` with ``R(x) = 2^r = 2^round(log2(max|x|))``, or ``None`` if ``x`` is all zeros.

    Exact: with ``max|x| = m·2^e`` (``m`` in ``[1/2, 1)``), ``round(log2) = e`` if ``m > sqrt(1/2)``
    else ``e − 1``. Raises ``ValueError`` for NaN/Inf.
    """
    lo, hi = finite_minmax(x, what)
    return round_log2(max(hi, -lo))


def round_log2(amax: float) -> int | None:
    """``round(log2(amax))`` exactly for a finite ``amax >= 0`` (``None`` for 0); see ``pow2_exponent``."""
    if amax == 0.0:
        return None
    mantissa, e = math.frexp(amax)
    return e if mantissa > _SQRT_HALF else e - 1


def stochastic_round(v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``SR(v) = floor(v) + [u < v − floor(v)]`` with ``u ~ U[0, 1)`` drawn from ``generator``.

    Unbiased: ``E[SR(v)] = v`` up to the resolution of ``u`` (2^-24 in float32). Integers are
    returned unchanged. The draw has ``v``'s shape, dtype and device, so the same generator state
    gives the same result.
    """
    floor = torch.floor(v)
    u = torch.rand(v.shape, generator=generator, dtype=v.dtype, device=v.device)
    return floor + (u < (v - floor)).to(v.dtype)
