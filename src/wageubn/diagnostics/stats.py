"""Statistics of one quantizer call: how much range and precision the quantization lost.

For a call ``after = quantizer(before)``:

* ``exponent`` — ``r`` of ``R(before) = 2^r`` (``null`` for an all-zero tensor);
* ``saturation`` — fraction of elements the quantizer clipped to its range (0 for the unbounded
  ``Q`` and for ``fit``); per kind: QC ``|Q(x)| > 1 − 2^(1−k)``; SQ ``|Q(x/R)| > 1`` (or the narrow
  limit); FQ coarse codes ``round(|y|) > 2^(k−1) − 1``; CQ ``|dr·x/R| > dr − 1``;
* ``underflow`` — fraction of the non-zero inputs that became zero;
* ``distinct`` — number of distinct output values (codes) used;
* ``over_range`` — for ``Q``: fraction of outputs whose codes need more than ``k`` signed bits (the
  paper's "8-bit" A, x̂, γ, β are unbounded fixed point, §8.3);
* ``unchanged`` — for U (``before`` = weights before the step): fraction of weights that did not move.

`code_histogram` counts the integer codes of one call (``after`` divided by its grid step) in
buckets over the role's nominal code range, so that the histograms of every layer of a role add
up (TensorBoard's ``codes/ROLE``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..quant import fit_exponent, pow2_exponent

__all__ = ["CodeHistogram", "code_histogram", "code_limit", "quantizer_stats"]

MAX_BUCKETS = 512  # 8-bit codes (257 values) get one bucket each; wider ranges share buckets


def _grid_step(kind: str, bits: int, r: int | None) -> float:
    """The step of the grid the output lies on (0 for an all-zero SQ/FQ input); for ``fit`` the
    finest grid it can use (its outputs lie on multiples of it)."""
    return {
        "SQ": 2.0 ** (r - (bits - 1)) if r is not None else 0.0,
        "FQ": 2.0 ** (r - 2 * (bits - 1)) if r is not None else 0.0,
        "CQ": 2.0 ** (-2 * (bits - 1)),
    }.get(kind, 2.0 ** (1 - bits))


def _frac(mask: torch.Tensor, n: int) -> float:
    return int(torch.count_nonzero(mask)) / n if n else 0.0


def _distinct(y: torch.Tensor, lsb: float) -> int:
    """Distinct values of ``y`` (all multiples of ``lsb``): a histogram of the integer codes when
    their span is moderate (one pass), else a sort."""
    codes = torch.round(y * (1.0 / lsb)) if lsb > 0 else y
    lo, hi = (float(v) for v in torch.aminmax(codes))
    if hi - lo < 2**22:
        return int(torch.count_nonzero(torch.bincount((codes - lo).to(torch.int64).flatten())))
    return int(torch.unique(y).numel())


def quantizer_stats(
    role: str,
    before: torch.Tensor,
    after: torch.Tensor,
    kind: str,
    bits: int,
    *,
    dr: int | None = None,
    narrow_range: bool = False,
) -> dict[str, Any]:
    """The statistics above for one call (tensors are not modified; float32 arithmetic on them is
    exact: only powers of two scale them)."""
    x = before.detach()
    y = after.detach()
    n = x.numel()
    r = pow2_exponent(x) if n else None
    nonzero = x != 0
    levels = 2.0 ** (bits - 1)
    lsb = _grid_step(kind, bits, r)
    stats: dict[str, Any] = {
        "numel": n,
        "exponent": r,
        "underflow": _frac(nonzero & (y == 0), int(torch.count_nonzero(nonzero))),
        "distinct": _distinct(y, lsb) if n else 0,
    }
    sat = None
    if kind == "QC":
        sat = torch.round(x * levels).abs() > levels - 1
    elif kind == "SQ" and r is not None:
        limit = levels - 1 if narrow_range else levels
        sat = torch.round(x * 2.0 ** (bits - 1 - r)).abs() > limit
    elif kind == "FQ" and r is not None:
        sat = torch.round((x * 2.0 ** (bits - 1 - r)).abs()) > levels - 1
    elif kind == "CQ" and r is not None and dr is not None:
        sat = (x * 2.0**-r * dr).abs() > dr - 1
    stats["saturation"] = _frac(sat, n) if sat is not None else 0.0
    if kind == "Q":
        stats["over_range"] = _frac((y * levels).abs() > levels - 1, n)
    if role == "U":
        stats["unchanged"] = _frac(x == y, n)
        stats.pop("underflow")
        stats["saturation"] = 0.0
    return stats


@dataclass
class CodeHistogram:
    """Counts of integer codes in ``len(counts)`` buckets of ``width`` codes from ``-limit``
    (codes beyond ``±limit`` — ``Q``'s over-range — are counted in the end buckets), with the
    sums TensorBoard's histograms want (over the clamped codes)."""

    limit: int
    width: int
    counts: torch.Tensor  # (buckets,) int64
    num: int = 0
    total: float = 0.0
    total_squares: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def add(self, other: CodeHistogram) -> None:
        """Add ``other`` (same ``limit`` and ``width``) into this one."""
        if (other.limit, other.width) != (self.limit, self.width):
            raise ValueError("CodeHistogram.add: different code ranges")
        self.counts += other.counts
        self.num += other.num
        self.total += other.total
        self.total_squares += other.total_squares
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    def bucket_limits(self) -> list[float]:
        """The right edge of every bucket, in codes (``c + 0.5`` for one-code buckets)."""
        return [-self.limit + (i + 1) * self.width - 0.5 for i in range(len(self.counts))]


def code_limit(kind: str, bits: int, dr: int | None = None) -> int:
    """The largest |code| a quantizer of ``kind`` can give at ``bits``: QC ``2^(k−1) − 1``, CQ
    ``dr − 1``, FQ ``2^(2(k−1))`` (codes of its fine step), Q/SQ/fit ``2^(k−1)``."""
    if kind == "QC":
        return 2 ** (bits - 1) - 1
    if kind == "CQ" and dr is not None:
        return dr - 1
    if kind in ("FQ", "CQ"):
        return 2 ** (2 * (bits - 1))
    return 2 ** (bits - 1)


def code_histogram(
    before: torch.Tensor, after: torch.Tensor, kind: str, bits: int, *, dr: int | None = None
) -> CodeHistogram:
    """The codes of one call ``after = quantizer(before)``: ``round(after / step)`` with the
    step of its grid, bucketed over ``[−code_limit, code_limit]``."""
    x, y = before.detach(), after.detach()
    limit = code_limit(kind, bits, dr)
    width = -(-(2 * limit + 1) // MAX_BUCKETS)  # ceil
    buckets = 2 * limit // width + 1
    n = y.numel()
    r = pow2_exponent(x) if n else None
    step = 2.0 ** fit_exponent(x, bits) if kind == "fit" and n else _grid_step(kind, bits, r)
    if n == 0 or step == 0.0:  # no elements, or all zero (SQ/FQ of zeros)
        codes = torch.zeros(n, dtype=torch.float64)
    else:
        codes = torch.round(y.to(torch.float64).flatten() * (1.0 / step))
    codes = codes.clamp_(-limit, limit)
    index = torch.div(codes + limit, width, rounding_mode="floor").to(torch.int64)
    counts = torch.bincount(index, minlength=buckets).cpu()
    return CodeHistogram(
        limit=limit,
        width=width,
        counts=counts,
        num=n,
        total=float(codes.sum()),
        total_squares=float((codes * codes).sum()),
        min=float(codes.min()) if n else math.inf,
        max=float(codes.max()) if n else -math.inf,
    )
