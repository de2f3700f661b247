"""Exact integer arithmetic of the integer runtime: values as ``(int64 tensor, Fraction scale)``.

``rne_div`` rounds a quotient half to even, ``scale_by`` / ``align`` move values between grids
exactly, ``digit_planes`` splits an integer tensor into kernel operands (uint8 digits, int8 top digit),
and ``check_int64`` refuses any intermediate that could leave int64 (``OverflowError``; nothing wraps
silently). ``wageubn.deploy.runtime`` composes them into the ops of an exported graph.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import torch

__all__ = [
    "Scaled",
    "align",
    "check_int64",
    "fit_exponent_scaled",
    "max_abs",
    "digit_planes",
    "rne_div",
    "scale_by",
]

_INT64_HEADROOM = 2**62


class Scaled(NamedTuple):
    """An integer tensor and its exact scale: the value is ``v · scale``."""

    v: torch.Tensor  # int64
    scale: Fraction


def rne_div(n: torch.Tensor, d: torch.Tensor | int) -> torch.Tensor:
    """Round-half-to-even of ``n / d`` for int64 ``n`` and positive integer ``d`` (broadcast):
    ``q = floor((2n + d) / 2d)``, minus one where that was an exact tie and ``q`` is odd."""
    if isinstance(d, int):
        if d == 1:
            return n
        if d & (d - 1) == 0:  # a power of two: shifts
            s = d.bit_length() - 1
            t = (n << 1) + d  # 2n + d
            q = t >> (s + 1)
            tie = (t & ((d << 1) - 1)) == 0
            return q - (tie & ((q & 1) == 1)).to(torch.int64)
        d = torch.tensor(d, dtype=torch.int64)
    t = n * 2 + d
    q = torch.div(t, d * 2, rounding_mode="floor")
    tie = q * (d * 2) == t
    return q - (tie & ((q & 1) == 1)).to(torch.int64)


def max_abs(v: torch.Tensor) -> int:
    if v.numel() == 0:
        return 0
    lo, hi = torch.aminmax(v)
    return max(int(hi), -int(lo))


def check_int64(bound: int, what: str) -> None:
    if bound >= _INT64_HEADROOM:
        raise OverflowError(
            f"{what}: an intermediate reaches {bound:.3e} > 2^62; the integer path would overflow "
            "int64 (re-export with fewer input bits or report the model)"
        )


def scale_by(v: torch.Tensor, ratio: Fraction, what: str) -> torch.Tensor:
    """``RNE(v · ratio)`` for a positive rational ``ratio``."""
    if ratio.numerator != 1:
        check_int64(max_abs(v) * ratio.numerator, what)
        v = v * ratio.numerator
    return rne_div(v, ratio.denominator)


def align(a: Scaled, b: Scaled, what: str) -> tuple[torch.Tensor, torch.Tensor, Fraction]:
    """Both values on their common grid ``gcd(s_a, s_b)``: exact integer multiples."""
    common = Fraction(
        math.gcd(a.scale.numerator, b.scale.numerator),
        math.lcm(a.scale.denominator, b.scale.denominator),
    )
    ka, kb = int(a.scale / common), int(b.scale / common)  # integers
    check_int64(max_abs(a.v) * ka + max_abs(b.v) * kb, what)
    return (a.v if ka == 1 else a.v * ka), (b.v if kb == 1 else b.v * kb), common


def digit_planes(v: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """``v`` as digit planes ``Σ plane · 2^shift``: kernel operands (uint8 digits, int8 top)."""
    lo, hi = (int(v.min()), int(v.max())) if v.numel() else (0, 0)
    if 0 <= lo and hi <= 255:
        return [(v.to(torch.uint8), 0)]
    if -128 <= lo and hi <= 127:
        return [(v.to(torch.int8), 0)]
    low = torch.bitwise_and(v, 255).to(torch.uint8)
    return [(low, 0)] + [(p, s + 8) for p, s in digit_planes(torch.bitwise_right_shift(v, 8))]


def fit_exponent_scaled(amax: int, scale: Fraction, bits: int) -> int:
    """``fit_exponent`` of a tensor whose ``max|x| = amax · scale``: the smallest ``e >= 1 − k``
    with ``max|x| <= (2^(k−1) − 1) · 2^e``."""
    top = 2 ** (bits - 1) - 1
    e = 1 - bits
    value = amax * scale
    while value > top * Fraction(2) ** e:
        e += 1
    return e
