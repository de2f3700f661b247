"""Argument checks of the public kernel entry points (``wageubn.kernels``): one ``TypeError`` or
``ValueError`` naming the function, the argument, the value and what is allowed — for the codes
(dtype, rank), the output exponent, the overflow bound of the accumulator and the conv geometry.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .backend import ConvGeometry
from .reference import DOUBLE_EXACT, accumulator_bound, accumulator_dtype, conv_out_size

__all__ = [
    "check_bound",
    "check_codes",
    "check_conv_shapes",
    "check_exponent",
    "conv_geometry",
    "full_size",
    "pair",
    "same_device",
]


def check_codes(fn: str, name: str, t: object, ndim: int, allow_uint8: bool) -> torch.Tensor:
    allowed = "int8 or uint8" if allow_uint8 else "int8"
    if not isinstance(t, torch.Tensor):
        raise TypeError(
            f"{fn}: {name} must be a torch.Tensor of {allowed} codes, got {type(t).__name__}"
        )
    ok = t.dtype == torch.int8 or (allow_uint8 and t.dtype == torch.uint8)
    if not ok:
        raise TypeError(
            f"{fn}: {name} must hold {allowed} integer codes, got dtype {t.dtype}; quantize it "
            "first (wageubn.quant) and pass the codes, not the float values"
        )
    if t.dim() != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def pair(fn: str, name: str, v: object, minimum: int) -> tuple[int, int]:
    if isinstance(v, bool) or not isinstance(v, int | Sequence):
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {v!r}")
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) for p in pair):
        raise ValueError(f"{fn}: {name} must be an int or a pair of ints, got {v!r}")
    if min(pair) < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {v!r}")
    return pair[0], pair[1]


def check_exponent(fn: str, out_exponent: object, out_guard: object = None) -> None:
    if out_guard is not None and (
        not isinstance(out_guard, torch.Tensor) or out_guard.dim() != 0 or out_exponent is None
    ):
        raise TypeError(
            f"{fn}: out_guard must be a 0-dim tensor (0 or NaN, added to the output scale) and "
            "needs out_exponent"
        )
    if out_exponent is None:
        return
    if isinstance(out_exponent, torch.Tensor):
        if out_exponent.dim() == 0 and not out_exponent.is_floating_point():
            return
    elif isinstance(out_exponent, int) and not isinstance(out_exponent, bool):
        return
    raise TypeError(
        f"{fn}: out_exponent must be None or an int (or a 0-dim integer tensor on the device): "
        f"the power of two of the float32 output scale; got {out_exponent!r}"
    )


def check_bound(fn: str, terms: int, a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    if accumulator_bound(terms, a.dtype, b.dtype) >= DOUBLE_EXACT:
        raise ValueError(f"{fn}: {terms} products per output can exceed 2^53; split the call")
    return accumulator_dtype(terms, a.dtype, b.dtype)


def same_device(fn: str, a: torch.Tensor, b: torch.Tensor) -> torch.device:
    if a.device != b.device:
        raise ValueError(f"{fn}: operands are on {a.device} and {b.device}; put both on one")
    return a.device


def conv_geometry(
    fn: str, stride: object, padding: object, dilation: object, groups: object
) -> ConvGeometry:
    """The checked geometry of a conv call: stride, padding and dilation as pairs, groups."""
    if isinstance(padding, str):
        raise ValueError(f"{fn}: string padding {padding!r} is not supported; pass ints")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{fn}: groups must be a positive int, got {groups!r}")
    return ConvGeometry(
        pair(fn, "stride", stride, 1),
        pair(fn, "padding", padding, 0),
        pair(fn, "dilation", dilation, 1),
        groups,
    )


def check_conv_shapes(
    fn: str,
    c_in: int,
    w_shape: Sequence[int],
    h: int,
    wd: int,
    geometry: ConvGeometry,
) -> tuple[int, int]:
    """``(Ho, Wo)`` of a conv of a ``c_in`` × ``h`` × ``wd`` input with weights ``w_shape``;
    ``ValueError`` when the channels and groups disagree or the kernel does not fit."""
    stride, padding, dilation, groups = geometry
    o, cg, kh, kw = w_shape
    if c_in % groups or o % groups or cg * groups != c_in:
        raise ValueError(
            f"{fn}: input channels {c_in}, output channels {o}, weight in-channels {cg} and "
            f"groups {groups} are inconsistent (need C == weight.shape[1] * groups, O % groups == 0)"
        )
    ho = conv_out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = conv_out_size(wd, kw, stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{fn}: input {h}x{wd} is smaller than the dilated kernel {kh}x{kw} plus padding"
        )
    return ho, wo


def full_size(fn: str, name: str, size: object, n: int, c: int) -> tuple[int, int, int, int]:
    if not isinstance(size, Sequence) or not all(isinstance(s, int) for s in size):
        raise TypeError(f"{fn}: {name} must be a sequence of ints, got {size!r}")
    if len(size) == 2:
        size = (n, c, *size)
    if len(size) != 4 or tuple(size[:2]) != (n, c):
        raise ValueError(
            f"{fn}: {name} must be (N, C, H, W) = ({n}, {c}, H, W) or (H, W), got {tuple(size)}"
        )
    return size[0], size[1], size[2], size[3]
