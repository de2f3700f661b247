"""Slow, obviously correct oracles written from the formulas of docs/WAGEUBN.md.

Everything here works element by element on exact rationals (``fractions.Fraction``): no float
rounding can hide between the formula and the result. Python's ``round`` on a ``Fraction`` rounds
half to even, as the contract asks. Results are returned as float64 tensors (every value here is
exactly representable) for ``assert_close(..., rtol=0, atol=0)`` against the library.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

F = Fraction


def _values(x: torch.Tensor) -> list[Fraction]:
    return [F(v) for v in x.detach().double().flatten().tolist()]


def _tensor(values: list[Fraction], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float64).reshape(like.shape)


def q(v: Fraction, k: int) -> Fraction:
    """Q(v, k) = round(v · 2^(k−1)) / 2^(k−1), ties to even."""
    n = F(2) ** (k - 1)
    return F(round(v * n)) / n


def clip(v: Fraction, lo: Fraction, hi: Fraction) -> Fraction:
    return min(max(v, lo), hi)


def r_exponent(values: list[Fraction]) -> int | None:
    """round(log2(max|v|)): the r with 2^(2r−1) <= max² < 2^(2r+1); None if all zero."""
    a = max(abs(v) for v in values)
    if a == 0:
        return None
    r = math.floor(math.log2(float(a)))  # an estimate; the loops below make it exact
    while a * a >= F(2) ** (2 * r + 1):
        r += 1
    while a * a < F(2) ** (2 * r - 1):
        r -= 1
    return r


def direct(x: torch.Tensor, k: int) -> torch.Tensor:
    return _tensor([q(v, k) for v in _values(x)], x)


def clipped_direct(x: torch.Tensor, k: int) -> torch.Tensor:
    lim = 1 - F(2) ** (1 - k)
    return _tensor([clip(q(v, k), -lim, lim) for v in _values(x)], x)


def pow2_scale(x: torch.Tensor) -> float:
    r = r_exponent(_values(x))
    return 0.0 if r is None else float(F(2) ** r)


def shift(x: torch.Tensor, k: int, narrow: bool = False) -> torch.Tensor:
    vals = _values(x)
    r = r_exponent(vals)
    if r is None:
        return torch.zeros_like(x, dtype=torch.float64)
    R = F(2) ** r
    lim = 1 - F(2) ** (1 - k) if narrow else F(1)
    return _tensor([R * clip(q(v / R, k), -lim, lim) for v in vals], x)


def flag(x: torch.Tensor, k: int) -> torch.Tensor:
    vals = _values(x)
    r = r_exponent(vals)
    if r is None:
        return torch.zeros_like(x, dtype=torch.float64)
    s = F(2) ** r / F(2) ** (k - 1)
    out = []
    for v in vals:
        y = v / s
        sign = (y > 0) - (y < 0)
        if abs(y) < 1:
            m = clip(q(abs(y), k), F(0), F(1))
        else:
            m = clip(F(round(abs(y))), F(0), F(2 ** (k - 1) - 1))
        out.append(s * sign * m)
    return _tensor(out, x)


def constant(x: torch.Tensor, k: int, dr: int, u: torch.Tensor) -> torch.Tensor:
    """CQ with the uniform draws ``u`` given explicitly (one per element, same order)."""
    vals = _values(x)
    r = r_exponent(vals)
    if r is None:
        return torch.zeros_like(x, dtype=torch.float64)
    R = F(2) ** r
    out = []
    for v, uu in zip(vals, _values(u), strict=True):
        t = F(dr) * v / R
        fl = math.floor(t)
        n = fl + (1 if uu < t - fl else 0)
        n = clip(F(n), F(-(dr - 1)), F(dr - 1))
        out.append(n * F(2) ** (-2 * (k - 1)))
    return _tensor(out, x)
