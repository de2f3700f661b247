"""Exact exponent arithmetic on the device, and the flat views the quantizer kernels take.

* ``round_log2`` — ``round(log2(amax))`` exactly, from the bits of ``amax`` (as float64: every
  float32, subnormals included, is a normal float64), as an int64 tensor;
* ``exp2i``, ``ldexp``, ``pow2`` — ``2^n`` and ``x · 2^n`` for an integer tensor ``n``, from bit
  patterns (no ``pow``/``exp2`` whose rounding could differ between devices);
* ``nan_guard`` — 0, or NaN for a non-finite ``amax``: how NaN reaches a result without a host read;
* ``const``, ``bound`` — cached 0-dim constants and clip bounds representable in a dtype;
* ``flat``, ``unflat``, ``is_dense`` — any dense tensor's elements in memory order as a 1-D view.

Used by ``wageubn.quant.device`` (the quantizer kernels, which re-export all of it) and the fused
kernels of the layers and the optimizer.
"""

from __future__ import annotations

import functools
import math
import struct

import torch

__all__ = [
    "bound",
    "const",
    "exp2i",
    "flat",
    "is_dense",
    "ldexp",
    "nan_guard",
    "pow2",
    "round_log2",
    "unflat",
]

_MASK52 = (1 << 52) - 1
# round(log2(m·2^e)) = e + [m > sqrt 2] for a float64 with significand 1.m (m the 52 stored bits):
# 1 + m/2^52 > sqrt 2  <=>  m > floor(sqrt(2)·2^52) − 2^52, as sqrt 2 is irrational (no ties).
_SQRT2_MANTISSA = math.isqrt(2 << 104) - (1 << 52)
# r is clamped to a range every real exponent lies in, so that ldexp below stays in range even
# for the meaningless r of an all-zero (or non-finite) tensor, whose output is zero (or NaN).
_R_LIMIT = {torch.float32: 160, torch.float64: 1100}
_EXP_BIAS = {torch.float32: (127, 23, torch.int32), torch.float64: (1023, 52, torch.int64)}


def round_log2(amax: torch.Tensor) -> torch.Tensor:
    """``round(log2(amax))`` (int64, same shape) for ``amax > 0``, exact; clamped to
    ``±_R_LIMIT[dtype]`` so zero and non-finite ``amax`` give a harmless value."""
    bits = amax.to(torch.float64).view(torch.int64)
    e = (bits >> 52) & 0x7FF
    r = e - 1023 + ((bits & _MASK52) > _SQRT2_MANTISSA).to(torch.int64)
    limit = _R_LIMIT[amax.dtype if amax.dtype == torch.float64 else torch.float32]
    return r.clamp(-limit, limit)


def exp2i(n: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``2^n`` in ``dtype`` (float32 or float64) from its bit pattern; ``n`` must lie in the
    normal range (float32: [−126, 127])."""
    bias, shift, itype = _EXP_BIAS[dtype]
    return ((n.to(itype) + bias) << shift).view(dtype)


def ldexp(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``x · 2^n`` for an integer tensor ``n`` (float32 or float64 ``x``), as two power-of-two
    factors that are each a normal float. Exact unless the result itself leaves the normal range;
    an intermediate can underflow only when both factors shrink, and then the final value is far
    below anything a quantizer keeps (it rounds to zero either way)."""
    half = n >> 1
    return x * exp2i(half, x.dtype) * exp2i(n - half, x.dtype)


def nan_guard(amax: torch.Tensor) -> torch.Tensor:
    """0 for a finite ``amax``, NaN for NaN or ±Inf: added to a result, it poisons the result."""
    return amax - amax


def const(value: float, dtype: torch.dtype, device: torch.device, tag: str = "") -> torch.Tensor:
    """A cached 0-dim constant on ``device`` (made once: no host-to-device copy per step).

    ``tag`` keeps constants of different roles distinct objects even when their values agree (a
    compiled kernel guards on which of its arguments alias). Never modify the returned tensor.
    Inside ``torch.compile`` the constant is made in the graph instead (no cache to trace)."""
    if torch.compiler.is_compiling():
        return torch.tensor(value, dtype=dtype, device=device)
    return _cached_const(value, dtype, device, tag)


@functools.cache
def _cached_const(value: float, dtype: torch.dtype, device: torch.device, tag: str) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype, device=device)


def bound(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded toward zero into ``dtype`` (float32 or float64), so a clip never leaves
    the range (float32: ``2^(k−1) − 1`` for k >= 25 would otherwise round up to ``2^(k−1)``).
    Pure Python: no tensor is made, nothing is read from a device."""
    if torch.compiler.is_compiling():
        return _bound(value, dtype)
    return _cached_bound(value, dtype)


def _bound(value: float, dtype: torch.dtype) -> float:
    if dtype != torch.float32:
        return float(value)
    (nearest,) = struct.unpack("<f", struct.pack("<f", value))
    if abs(nearest) > abs(value):  # one float32 step toward zero
        (bits,) = struct.unpack("<I", struct.pack("<f", nearest))
        (nearest,) = struct.unpack("<f", struct.pack("<I", bits - 1))
    return nearest


_cached_bound = functools.cache(_bound)


def flat(x: torch.Tensor) -> torch.Tensor:
    """The elements of ``x`` in memory order as a 1-D view (channels_last or any other dense
    layout); a contiguous copy when ``x`` is not dense. ``unflat`` restores the layout."""
    # detached: a kernel should see a plain tensor, not a view whose base it would guard on
    if x.is_contiguous():
        return x.view(-1).detach()
    if is_dense(x):
        return x.as_strided((x.numel(),), (1,), x.storage_offset()).detach()
    return x.contiguous().view(-1).detach()


def unflat(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 1-D result of a kernel on ``flat(like)`` in ``like``'s shape and layout."""
    if like.is_contiguous() or not is_dense(like):
        return y.view(like.shape)
    return y.as_strided(like.shape, like.stride())


def is_dense(x: torch.Tensor) -> bool:
    """Non-overlapping and dense: the strides, sorted, are the running products of the sizes."""
    expected = 1
    for size, stride in sorted(zip(x.shape, x.stride(), strict=True), key=lambda p: p[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def pow2(n: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``2^n`` as two normal-float factors (``ldexp(x, n) == x * f1 * f2``).

    Kernels return these factors as extra outputs: a returned 0-dim value is computed once and
    loaded by the elementwise loop, instead of being re-derived for every vector of elements."""
    half = n >> 1
    return exp2i(half, dtype), exp2i(n - half, dtype)
