"""Convolutions as GEMMs, the same on every device: im2col forward, col2im input gradient,
colsᵀ·E weight gradient, and the stride-1 weight gradient as one GEMM per tap on shifted views
(no im2col; the CPU uses it for few channels) (docs/kernels.md).

Each form takes the backend's exact integer matrix product ``mm(a, b, out_dtype)`` — the CPU's
chunked ``torch._int_mm`` (``kernels.cpu``), cuBLASLt's with padding and a uint8 correction
(``kernels.cuda``) — and turns the exact accumulator into the output with ``to_output``: itself,
or float32 ``acc · 2^e`` rounded once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .reference import Exponent, Pair, conv_out_size, scale_exact, scale_tensor

__all__ = [
    "MatMul",
    "gemm_conv2d_forward",
    "gemm_conv2d_input_grad",
    "gemm_conv2d_weight_grad",
    "implicit_weight_grad",
    "to_output",
]

MatMul = Callable[[torch.Tensor, torch.Tensor, torch.dtype], torch.Tensor]
CL = torch.channels_last


def to_output(acc: torch.Tensor, out_exponent, guard: torch.Tensor | None = None) -> torch.Tensor:
    """Exact integer accumulator → itself, or float32 ``acc · 2^e`` rounded once.

    ``out_exponent`` is an int, or a 0-dim integer tensor (no host read: the int32 → float32
    conversion rounds once and the power of two scales exactly while the result is a normal
    float32); ``guard`` (0 or NaN) is added to the scale."""
    if out_exponent is None:
        return acc
    if isinstance(out_exponent, torch.Tensor) or guard is not None:
        if acc.dtype == torch.int32:
            scale = scale_tensor(out_exponent, guard, torch.float32, acc.device)
            return acc.to(torch.float32).mul_(scale)
        return scale_exact(acc, out_exponent, guard)
    if acc.dtype == torch.int32 and -126 <= out_exponent <= 127 - 32:
        # int32 → float32 rounds once (nearest-even); a normal power of two scales exactly
        return acc.to(torch.float32).mul_(2.0**out_exponent)
    return scale_exact(acc, out_exponent)


def _padded_nhwc(x: torch.Tensor, padding) -> torch.Tensor:
    """(N, C, H, W) → contiguous (N, H + 2ph, W + 2pw, C), zero padded, same dtype."""
    xn = x.contiguous(memory_format=CL).permute(0, 2, 3, 1)
    if padding == (0, 0):
        return xn
    return F.pad(xn, (0, 0, padding[1], padding[1], padding[0], padding[0])).contiguous()


def _im2col(xp: torch.Tensor, kh, kw, stride, dilation, ho, wo) -> torch.Tensor:
    """Padded NHWC (a channel slice is fine) → contiguous (N·Ho·Wo, kh·kw·C) columns."""
    n, _, _, c = xp.shape
    s0, s1, s2, _ = xp.stride()
    view = xp.as_strided(
        (n, ho, wo, kh, kw, c),
        (s0, stride[0] * s1, stride[1] * s2, dilation[0] * s1, dilation[1] * s2, 1),
    )
    return view.reshape(n * ho * wo, kh * kw * c)


def _rows_nhwc(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N·H·W, C), a view when ``t`` is channels_last."""
    return t.contiguous(memory_format=CL).permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def gemm_conv2d_forward(
    x,
    w,
    stride,
    padding,
    dilation,
    groups,
    *,
    out_dtype,
    out_exponent,
    out_guard=None,
    mm: MatMul,
):
    """Forward as im2col GEMMs, one per group; channels_last result."""
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    ho = conv_out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = conv_out_size(wd, kw, stride[1], padding[1], dilation[1])
    xp = _padded_nhwc(x, padding)
    wt = w.permute(0, 2, 3, 1)  # (O, kh, kw, C/g)
    out = torch.empty((n, ho, wo, o), dtype=out_dtype, device=x.device)
    for g in range(groups):
        cols = _im2col(xp[..., g * cg : (g + 1) * cg], kh, kw, stride, dilation, ho, wo)
        wg = wt[g * og : (g + 1) * og].reshape(og, kh * kw * cg).t()  # (K, O/g)
        out[..., g * og : (g + 1) * og] = mm(cols, wg, out_dtype).view(n, ho, wo, og)
    return to_output(out, out_exponent, out_guard).permute(0, 3, 1, 2)


def gemm_conv2d_input_grad(
    e,
    w,
    input_size,
    stride,
    padding,
    dilation,
    groups,
    *,
    out_dtype,
    out_exponent,
    out_guard=None,
    mm: MatMul,
):
    """Input gradient as ``E @ W`` (per group) then a per-tap strided scatter-add (col2im).

    A 1×1 kernel puts each product on its own input position (no two taps meet): the products
    are scaled to the output first and scattered into zeros, with no accumulator the size of the
    input."""
    n, o, ho, wo = e.shape
    _, cg, kh, kw = w.shape
    og = o // groups
    h, wd = input_size[2], input_size[3]
    rows = _rows_nhwc(e)  # (N·Ho·Wo, O)
    if kh == kw == 1 and padding == (0, 0) and out_exponent is not None:
        shape = (n, h, wd, cg * groups)
        if out_guard is None:
            dx = torch.zeros(shape, dtype=torch.float32, device=e.device)
        else:  # the guard (0 or NaN) everywhere, as the scaled accumulator would carry it
            dx = out_guard.to(torch.float32).expand(shape).contiguous()
        r = slice(0, stride[0] * (ho - 1) + 1, stride[0])
        c = slice(0, stride[1] * (wo - 1) + 1, stride[1])
        for g in range(groups):
            wg = w[g * og : (g + 1) * og].reshape(og, cg)
            acc = to_output(mm(rows[:, g * og : (g + 1) * og], wg, out_dtype), out_exponent,
                            out_guard)  # fmt: skip
            dx[:, r, c, g * cg : (g + 1) * cg] = acc.view(n, ho, wo, cg)
        return dx.permute(0, 3, 1, 2)
    dxp = torch.zeros(
        (n, h + 2 * padding[0], wd + 2 * padding[1], cg * groups), dtype=out_dtype, device=e.device
    )
    for g in range(groups):
        wg = w[g * og : (g + 1) * og].permute(0, 2, 3, 1).reshape(og, kh * kw * cg)
        cols = mm(rows[:, g * og : (g + 1) * og], wg, out_dtype).view(n, ho, wo, kh, kw, cg)
        for i in range(kh):
            r = slice(i * dilation[0], i * dilation[0] + stride[0] * (ho - 1) + 1, stride[0])
            for j in range(kw):
                c = slice(j * dilation[1], j * dilation[1] + stride[1] * (wo - 1) + 1, stride[1])
                dxp[:, r, c, g * cg : (g + 1) * cg] += cols[:, :, :, i, j]
    dx = dxp[:, padding[0] : padding[0] + h, padding[1] : padding[1] + wd]
    return to_output(dx.contiguous(), out_exponent, out_guard).permute(0, 3, 1, 2)


def gemm_conv2d_weight_grad(
    x,
    e,
    weight_size,
    stride,
    padding,
    dilation,
    groups,
    *,
    out_dtype,
    out_exponent,
    out_guard=None,
    mm: MatMul,
):
    """Weight gradient per group: ``Eᵀ @ cols`` for int8 ``x`` (the result already in the
    weight's (O, kh, kw, C/g) order), ``(colsᵀ @ E)ᵀ`` for uint8 ``x`` (which ``_int_mm`` takes
    on the left only); the columns and ``E`` read through transposed views. The result is
    channels_last-strided (O, C/g, kh, kw): transposing the accumulator cost more than the GEMM
    (a (4608, 1024) int32 one, 15.5 ms against 8 ms)."""
    o, cg, kh, kw = weight_size
    og = o // groups
    _, _, ho, wo = e.shape
    xp = _padded_nhwc(x, padding)
    rows = _rows_nhwc(e)  # (N·Ho·Wo, O)
    parts = []  # per group, (O/g, kh·kw·C/g)
    for g in range(groups):
        cols = _im2col(xp[..., g * cg : (g + 1) * cg], kh, kw, stride, dilation, ho, wo)
        eg = rows[:, g * og : (g + 1) * og]
        if x.dtype == torch.int8:
            parts.append(mm(eg.t(), cols, out_dtype))
        else:
            parts.append(mm(cols.t(), eg, out_dtype).t())  # a transposed view
    acc = parts[0] if groups == 1 else torch.cat(parts)
    res = acc.reshape(o, kh, kw, cg)  # a copy only where acc is a transposed view
    return to_output(res.permute(0, 3, 1, 2), out_exponent, out_guard)


def implicit_weight_grad(
    x: torch.Tensor,
    e: torch.Tensor,
    weight_size: Sequence[int],
    padding: Pair,
    dilation: Pair,
    *,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
    mm: MatMul,
) -> torch.Tensor:
    """Stride-1 weight gradient without im2col: for tap (i, j), the padded input flattened to
    rows and shifted by ``i·d·Wp + j·d`` rows lines up with the error placed on the padded grid
    (zeros elsewhere), so each tap is one GEMM on views; the zero rows add nothing."""
    o, c, kh, kw = weight_size
    n, _, ho, wo = e.shape
    xp = _padded_nhwc(x, padding)
    hp, wp = xp.shape[1], xp.shape[2]
    flat_x = xp.reshape(-1, c)
    ep = torch.zeros((n, hp, wp, o), dtype=torch.int8)
    ep[:, :ho, :wo] = e.permute(0, 2, 3, 1)
    flat_e = ep.view(-1, o)
    length = n * hp * wp - ((kh - 1) * dilation[0] * wp + (kw - 1) * dilation[1])
    res = torch.empty((kh, kw, c, o), dtype=out_dtype)
    for i in range(kh):
        for j in range(kw):
            off = i * dilation[0] * wp + j * dilation[1]
            res[i, j] = mm(flat_x[off : off + length].t(), flat_e[:length], out_dtype)
    return to_output(res.permute(3, 2, 0, 1).contiguous(), out_exponent, out_guard)
