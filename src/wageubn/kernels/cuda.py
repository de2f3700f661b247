"""The CUDA backend: ``torch._int_mm`` (cuBLASLt int8 GEMM) on im2col (docs/kernels.md).

The convolution formulations are the device-agnostic GEMM forms of :mod:`.gemm_conv`; only the
matrix product differs. cuBLASLt's ``_int_mm`` takes int8 on both sides, needs M > 16 and K, N
multiples of 8, and wraps on int32 overflow, so :func:`_mm` pads with zeros (which add nothing),
feeds uint8 codes as ``code − 128`` plus the exact correction ``128 · Σ_k b[k, :]``, and chunks K
with int64 accumulation wherever int32 could overflow.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .gemm_conv import (
    gemm_conv2d_forward,
    gemm_conv2d_input_grad,
    gemm_conv2d_weight_grad,
    to_output,
)
from .reference import INT32_MAX, Exponent, Pair


def is_available() -> bool:
    """True where CUDA works in this process."""
    return torch.cuda.is_available()


def _mm(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Exact (M, K) uint8/int8 @ (K, N) int8 → (M, N) ``out_dtype`` on CUDA."""
    m, k = a.shape
    n = b.shape[1]
    shifted = a.dtype == torch.uint8
    if shifted:  # flipping the sign bit subtracts 128 from a uint8 value read as int8
        a = torch.bitwise_xor(a, 128).view(torch.int8)
    mp, kp, np_ = max(m, 17), -(-k // 8) * 8, -(-n // 8) * 8
    a = F.pad(a, (0, kp - k, 0, mp - m)).contiguous()
    bp = F.pad(b, (0, np_ - n, 0, kp - k)).contiguous()
    chunk = INT32_MAX // (128 * 128) // 8 * 8
    if kp <= chunk and not shifted:
        acc = torch._int_mm(a, bp)[:m, :n]
        return acc if out_dtype == torch.int32 else acc.to(out_dtype)
    acc = torch.zeros((mp, np_), dtype=torch.int64, device=a.device)
    for k0 in range(0, kp, chunk):
        acc += torch._int_mm(a[:, k0 : k0 + chunk], bp[k0 : k0 + chunk])
    acc = acc[:m, :n]
    if shifted:
        acc = acc + 128 * b.sum(0, dtype=torch.int64)
    return acc.to(out_dtype)


def linear_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """x @ wᵀ."""
    return to_output(_mm(x, w.t(), out_dtype), out_exponent, out_guard)


def linear_input_grad(
    e: torch.Tensor,
    w: torch.Tensor,
    *,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """e @ w."""
    return to_output(_mm(e, w, out_dtype), out_exponent, out_guard)


def linear_weight_grad(
    e: torch.Tensor,
    x: torch.Tensor,
    *,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """eᵀ @ x, computed as (xᵀ @ e)ᵀ so uint8 x takes the shifted left operand."""
    return to_output(_mm(x.t(), e, out_dtype), out_exponent, out_guard).t().contiguous()


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
    """im2col GEMM per group."""
    return gemm_conv2d_forward(
        x,
        w,
        stride,
        padding,
        dilation,
        groups,
        out_dtype=out_dtype,
        out_exponent=out_exponent,
        out_guard=out_guard,
        mm=_mm,
    )


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
    """E @ W per group, then a per-tap scatter-add."""
    return gemm_conv2d_input_grad(
        e,
        w,
        input_size,
        stride,
        padding,
        dilation,
        groups,
        out_dtype=out_dtype,
        out_exponent=out_exponent,
        out_guard=out_guard,
        mm=_mm,
    )


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
    """colsᵀ @ E per group."""
    return gemm_conv2d_weight_grad(
        x,
        e,
        weight_size,
        stride,
        padding,
        dilation,
        groups,
        out_dtype=out_dtype,
        out_exponent=out_exponent,
        out_guard=out_guard,
        mm=_mm,
    )
