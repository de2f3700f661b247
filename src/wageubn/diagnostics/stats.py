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
"""

from __future__ import annotations

from typing import Any

import torch

from ..quant import pow2_exponent

__all__ = ["quantizer_stats"]


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
    lsb = {
        "SQ": 2.0 ** (r - (bits - 1)) if r is not None else 0.0,
        "FQ": 2.0 ** (r - 2 * (bits - 1)) if r is not None else 0.0,
        "CQ": 2.0 ** (-2 * (bits - 1)),
    }.get(kind, 2.0 ** (1 - bits))
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
