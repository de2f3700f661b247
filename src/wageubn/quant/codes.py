"""Integer codes with a power-of-two exponent: the storage form of the ``int8`` mode (§6).

A quantized tensor ``x`` is ``code · 2^exponent`` with ``code`` an integer tensor (int8 for the GEMM
operands) and ``exponent`` one Python ``int`` per tensor. ``encode`` checks both that ``x`` lies on
the grid and that every code fits; nothing is rounded or clipped silently.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .rounding import check_bits

__all__ = ["IntTensor", "decode", "encode", "min_exponent"]

_INT_DTYPES = {8: torch.int8, 16: torch.int16, 32: torch.int32}


class IntTensor(NamedTuple):
    """``codes · 2^exponent``: integer codes plus one integer exponent for the whole tensor."""

    codes: torch.Tensor
    exponent: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return decode(self.codes, self.exponent, dtype)


def _code_dtype(bits: int) -> torch.dtype:
    for width, dtype in _INT_DTYPES.items():
        if bits <= width:
            return dtype
    return torch.int64


def encode(x: torch.Tensor, exponent: int, bits: int = 8, *, signed: bool = True) -> IntTensor:
    """Codes of ``x`` on the grid ``2^exponent``, each within ``k`` bits (``±(2^(k−1) − 1)`` signed,
    ``[0, 2^k − 1]`` unsigned), in the smallest integer dtype that holds them.

    Raises ``ValueError`` if an element is off the grid or out of range (the value, the index and
    the fix are named): ``encode`` never rounds or clips.
    """
    bits = check_bits(bits)
    if isinstance(exponent, bool) or not isinstance(exponent, int):
        raise TypeError(f"exponent must be an int, got {exponent!r}")
    scaled = x.double() * 2.0 ** (-exponent)
    rounded = torch.round(scaled)
    off = rounded != scaled
    if bool(off.any()):
        i = int(off.flatten().nonzero()[0])
        raise ValueError(
            f"encode: element {i} = {float(x.flatten()[i])!r} is not a multiple of 2^{exponent}; "
            "quantize the tensor onto that grid first"
        )
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    bad = (rounded < lo) | (rounded > hi)
    if bool(bad.any()):
        i = int(bad.flatten().nonzero()[0])
        raise ValueError(
            f"encode: code {int(rounded.flatten()[i])} of element {i} is outside [{lo}, {hi}] for "
            f"{bits}-bit {'signed' if signed else 'unsigned'} codes at exponent {exponent}; "
            "choose a larger exponent (see min_exponent)"
        )
    dtype = _code_dtype(bits) if signed else _code_dtype(bits + 1)
    if not signed and bits == 8:
        dtype = torch.uint8
    return IntTensor(rounded.to(dtype), exponent)


def decode(codes: torch.Tensor, exponent: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``codes · 2^exponent`` as a float tensor (exact while the codes fit the dtype's mantissa)."""
    return codes.to(dtype) * torch.tensor(2.0**exponent, dtype=dtype, device=codes.device)


def min_exponent(x: torch.Tensor, bits: int = 8, *, floor: int | None = None) -> int | None:
    """The smallest exponent ``e`` with ``max|x| ≤ (2^(k−1) − 1) · 2^e`` (no saturation), optionally
    not below ``floor``. ``None`` for an all-zero tensor (with ``floor`` given: ``floor``).

    This only bounds the range; whether ``x`` lies on the ``2^e`` grid is the caller's business.
    """
    from .functions import range_exponent

    e = range_exponent(x, bits)
    if e is None:
        return floor
    return e if floor is None else max(e, floor)
