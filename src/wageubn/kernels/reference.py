"""The oracle: exact integer products by int64 loops over kernel taps (docs/kernels.md).

Every function here widens its int8/uint8 codes to int64 and accumulates in int64, one kernel
tap at a time, so each result is the exact integer sum of products. It is slow and obviously
correct; the fast backends are tested bit for bit against it.

The module also holds the two rules every backend shares: which integer dtype holds the
accumulator (:func:`accumulator_dtype`) and how the ``out_exponent=`` mode rounds it
(:func:`scale_exact`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..quant.device import ldexp

INT32_MAX = 2**31 - 1
FLOAT_EXACT = 2**24  # every integer of magnitude <= 2^24 is a float32
DOUBLE_EXACT = 2**53  # every integer of magnitude <= 2^53 is a float64

Pair = tuple[int, int]


def is_available() -> bool:
    """The reference backend works everywhere."""
    return True


def code_max(dtype: torch.dtype) -> int:
    """Largest magnitude a code of ``dtype`` can hold: 255 for uint8, 128 for int8 (-128)."""
    return 255 if dtype == torch.uint8 else 128


def accumulator_bound(terms: int, a_dtype: torch.dtype, b_dtype: torch.dtype) -> int:
    """Worst-case ``|acc|`` of a sum of ``terms`` products of codes of the two dtypes."""
    return terms * code_max(a_dtype) * code_max(b_dtype)


def accumulator_dtype(terms: int, a_dtype: torch.dtype, b_dtype: torch.dtype) -> torch.dtype:
    """int32 when ``terms · max|a| · max|b| <= 2^31 − 1`` is guaranteed by the dtypes, else int64.

    The rule depends on shapes and dtypes only, never on the data, so every backend returns the
    same dtype for the same call.
    """
    bound = accumulator_bound(terms, a_dtype, b_dtype)
    return torch.int32 if bound <= INT32_MAX else torch.int64


Exponent = int | torch.Tensor


def scale_tensor(
    out_exponent: Exponent, guard: torch.Tensor | None, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``2^out_exponent`` as a 0-dim ``dtype`` tensor (an int, or a 0-dim integer tensor that stays
    on the device), plus ``guard`` (0, or NaN to poison the product) when given."""
    if isinstance(out_exponent, torch.Tensor):
        one = torch.ones((), dtype=dtype, device=out_exponent.device)
        s = ldexp(one, out_exponent)
    else:
        s = torch.tensor(2.0**out_exponent, dtype=dtype, device=device)
    return s if guard is None else s + guard.to(dtype)


def scale_exact(
    acc: torch.Tensor, out_exponent: Exponent, guard: torch.Tensor | None = None
) -> torch.Tensor:
    """float32 ``acc · 2^out_exponent``, rounded once (nearest-even) from the exact integer.

    ``acc`` is an int32/int64 tensor with ``|acc| < 2^53``: the int64 → float64 conversion and
    the power-of-two scaling are exact in float64, so the only rounding is the final cast.
    """
    if isinstance(out_exponent, int) and guard is None:
        return (acc.to(torch.float64) * (2.0**out_exponent)).to(torch.float32)
    scale = scale_tensor(out_exponent, guard, torch.float64, acc.device)
    return (acc.to(torch.float64) * scale).to(torch.float32)


def finish(
    acc: torch.Tensor,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact int64 accumulator → the caller's output (integer of ``out_dtype`` or scaled float32)."""
    if out_exponent is None:
        return acc.to(out_dtype)
    return scale_exact(acc, out_exponent, guard)


def conv_out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """Output length of a convolution along one spatial dimension (as ``F.conv2d``)."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _tap(k_index: int, d: int, s: int, n_out: int) -> slice:
    """Rows of the padded input that kernel tap ``k_index`` meets, one per output position."""
    start = k_index * d
    return slice(start, start + s * (n_out - 1) + 1, s)


# ---------------------------------------------------------------------------------------- linear


def linear_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """(M, K) x (N, K) → (M, N) = x @ wᵀ in int64."""
    return finish(x.to(torch.int64) @ w.to(torch.int64).t(), out_dtype, out_exponent, out_guard)


def linear_input_grad(
    e: torch.Tensor,
    w: torch.Tensor,
    *,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """(M, N) e, (N, K) w → (M, K) = e @ w in int64."""
    return finish(e.to(torch.int64) @ w.to(torch.int64), out_dtype, out_exponent, out_guard)


def linear_weight_grad(
    e: torch.Tensor,
    x: torch.Tensor,
    *,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """(M, N) e, (M, K) x → (N, K) = eᵀ @ x in int64."""
    return finish(e.to(torch.int64).t() @ x.to(torch.int64), out_dtype, out_exponent, out_guard)


# ------------------------------------------------------------------------------------------ conv


def conv2d_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
    *,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, C, H, W) x, (O, C/g, kh, kw) w → (N, O, Ho, Wo), as ``F.conv2d``, int64 per tap."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho = conv_out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = conv_out_size(wd, kw, stride[1], padding[1], dilation[1])
    xp = torch.nn.functional.pad(x.to(torch.int64), (padding[1],) * 2 + (padding[0],) * 2)
    xp = xp.reshape(n, groups, cg, *xp.shape[2:])  # (N, g, C/g, Hp, Wp)
    wg = w.to(torch.int64).reshape(groups, o // groups, cg, kh, kw)
    acc = torch.zeros((n, groups, o // groups, ho, wo), dtype=torch.int64)
    for i in range(kh):
        for j in range(kw):
            rows, cols = _tap(i, dilation[0], stride[0], ho), _tap(j, dilation[1], stride[1], wo)
            patch = xp[:, :, :, rows, cols]  # (N, g, C/g, Ho, Wo)
            acc += torch.einsum("ngchw,goc->ngohw", patch, wg[..., i, j])
    return finish(acc.reshape(n, o, ho, wo), out_dtype, out_exponent, out_guard)


def conv2d_input_grad(
    e: torch.Tensor,
    w: torch.Tensor,
    input_size: Sequence[int],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
    *,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, O, Ho, Wo) e, (O, C/g, kh, kw) w → (N, C, H, W), as ``torch.nn.grad.conv2d_input``.

    Each tap scatter-adds ``e · w[:, :, i, j]`` into the padded input grid; the padding is then
    cropped away.
    """
    n, o, ho, wo = e.shape
    _, cg, kh, kw = w.shape
    h, wd = input_size[2], input_size[3]
    hp, wp = h + 2 * padding[0], wd + 2 * padding[1]
    eg = e.to(torch.int64).reshape(n, groups, o // groups, ho, wo)
    wg = w.to(torch.int64).reshape(groups, o // groups, cg, kh, kw)
    dxp = torch.zeros((n, groups, cg, hp, wp), dtype=torch.int64)
    for i in range(kh):
        for j in range(kw):
            rows, cols = _tap(i, dilation[0], stride[0], ho), _tap(j, dilation[1], stride[1], wo)
            dxp[:, :, :, rows, cols] += torch.einsum("ngohw,goc->ngchw", eg, wg[..., i, j])
    dx = dxp[..., padding[0] : padding[0] + h, padding[1] : padding[1] + wd]
    return finish(dx.reshape(n, groups * cg, h, wd), out_dtype, out_exponent, out_guard)


def conv2d_weight_grad(
    x: torch.Tensor,
    e: torch.Tensor,
    weight_size: Sequence[int],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
    *,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, C, H, W) x, (N, O, Ho, Wo) e → (O, C/g, kh, kw), as ``torch.nn.grad.conv2d_weight``."""
    n, c, h, wd = x.shape
    _, o, ho, wo = e.shape
    _, cg, kh, kw = weight_size
    xp = torch.nn.functional.pad(x.to(torch.int64), (padding[1],) * 2 + (padding[0],) * 2)
    xp = xp.reshape(n, groups, cg, *xp.shape[2:])
    eg = e.to(torch.int64).reshape(n, groups, o // groups, ho, wo)
    acc = torch.zeros((groups, o // groups, cg, kh, kw), dtype=torch.int64)
    for i in range(kh):
        for j in range(kw):
            rows, cols = _tap(i, dilation[0], stride[0], ho), _tap(j, dilation[1], stride[1], wo)
            acc[..., i, j] = torch.einsum("ngohw,ngchw->goc", eg, xp[:, :, :, rows, cols])
    return finish(acc.reshape(o, cg, kh, kw), out_dtype, out_exponent, out_guard)
