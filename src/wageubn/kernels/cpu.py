"""The fast CPU backend: oneDNN u8·s8 convolutions and ``torch._int_mm`` (docs/kernels.md).

Which formulation each product uses (all exact; measured facts in shared/docs/INT8-CPU.md):

* conv forward: ``onednn::qconv2d_pointwise`` with uint8 activations in channels_last (int8
  codes enter as ``code + 128`` with zero point 128), int8 weights, float32 output whose scale
  ``2^out_exponent`` is passed as the op's own scales. float32 holds the int32 accumulator
  exactly below 2^24; above that the exact-integer mode splits the weights into two base-16
  digits (one call with 2·O channels), and beyond that bound uses the im2col GEMM.
* conv input gradient: the same op on the error (zero point 128) with the weights rotated by
  180° and their channels swapped; stride > 1 by a phase decomposition (one stride-1 conv with
  ``s²·C`` output channels, then a depth-to-space copy). 1×1 stride > 1: ``_int_mm`` + scatter.
* conv weight gradient: ``_int_mm(colsᵀ, E)`` with ``cols`` the uint8/int8 NHWC im2col (pad +
  ``as_strided``) read through a transposed view; at stride 1 with few channels an im2col-free
  form (one GEMM per tap on a shifted view of the padded input) is faster.
* linear: ``_int_mm``. Every ``_int_mm`` is chunked over K and summed in int64 wherever the int32
  accumulator could overflow (``_int_mm`` wraps silently).

The oneDNN path is used only after a probe on first use has checked, on this CPU, that extreme
codes (255 · −128, zero point 128 at −128) come out exact; otherwise every product takes the
``_int_mm`` formulations, which are equally exact. The oneDNN forms are ``kernels.onednn``, the
device-agnostic GEMM forms ``kernels.gemm_conv``; this module chooses between them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from . import onednn
from .gemm_conv import (
    gemm_conv2d_forward,
    gemm_conv2d_input_grad,
    gemm_conv2d_weight_grad,
    implicit_weight_grad,
    to_output,
)
from .reference import (
    INT32_MAX,
    Exponent,
    Pair,
    code_max,
    conv_out_size,
)

log = logging.getLogger(__name__)

CL = torch.channels_last


# ---------------------------------------------------------------------------------------- probes


_PROBED: dict[str, bool] = {}


def _probed(name: str, probe: Callable[[], bool]) -> bool:
    """The cached result of an exactness probe (a plain dict, so ``torch.compile`` reads it as a
    constant); the probe itself runs once, eagerly, outside any graph."""
    if name not in _PROBED:
        _PROBED[name] = torch.compiler.disable(probe)()
    return _PROBED[name]


def _int_mm_exact() -> bool:
    return _probed("int_mm", _probe_int_mm)


def _onednn_exact() -> bool:
    return _probed("onednn", onednn.probe_exact)


def _probe_int_mm() -> bool:
    """``torch._int_mm`` exists and is exact here on saturating codes (255 · −128 pairs)."""
    a = torch.full((3, 40), 255, dtype=torch.uint8)
    b = torch.full((40, 5), -128, dtype=torch.int8)
    b[1::2] = 127
    s = torch.full((3, 40), -128, dtype=torch.int8)
    try:
        ok = all(
            torch.equal(torch._int_mm(p, b).to(torch.int64), p.to(torch.int64) @ b.to(torch.int64))
            for p in (a, s)
        )
    except RuntimeError as err:  # the op is missing or rejects these dtypes: not usable
        log.warning("torch._int_mm is unusable on this CPU (%s); the cpu backend is off", err)
        return False
    if not ok:
        log.warning("torch._int_mm is inexact on this CPU; the cpu backend is off")
    return ok


def is_available() -> bool:
    """The cpu backend needs an exact ``torch._int_mm``; oneDNN convolutions are optional."""
    return _int_mm_exact()


# ----------------------------------------------------------------------------------- primitives


def _gemm_operand(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it is a plain row- or column-major matrix, else a row-major copy.

    ``_int_mm`` reads the raw strides: a (1, K) view with strides (1, 1) (legal, as the stride of a
    size-1 dimension is arbitrary) came back as garbage in torch 2.14, and stride-0 (expanded)
    or step-sliced operands are not plain matrices either.
    """
    r, c = t.shape
    s0, s1 = t.stride()
    if r > 1 and c > 1 and ((s1 == 1 and s0 >= c) or (s0 == 1 and s1 >= r)):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _mm(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Exact (M, K) uint8/int8 @ (K, N) int8 → (M, N) ``out_dtype``.

    ``_int_mm`` accumulates in int32 and wraps silently: K is cut into chunks whose worst case
    fits int32, and the chunks are summed in int64.
    """
    a, b = _gemm_operand(a), _gemm_operand(b)
    k = a.shape[1]
    chunk = INT32_MAX // (code_max(a.dtype) * 128)
    if k <= chunk:
        acc = torch._int_mm(a, b)
        return acc if out_dtype == torch.int32 else acc.to(out_dtype)
    acc = torch.zeros((a.shape[0], b.shape[1]), dtype=torch.int64, device=a.device)
    for k0 in range(0, k, chunk):
        acc += torch._int_mm(a[:, k0 : k0 + chunk], b[k0 : k0 + chunk])
    return acc.to(out_dtype)


# ----------------------------------------------------------------------------- CPU-only forms


# ------------------------------------------------------------------------------------ public


def linear_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """x @ wᵀ by ``_int_mm`` (wᵀ is a view)."""
    return to_output(_mm(x, w.t(), out_dtype), out_exponent, out_guard)


def linear_input_grad(
    e: torch.Tensor,
    w: torch.Tensor,
    *,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """e @ w by ``_int_mm``."""
    return to_output(_mm(e, w, out_dtype), out_exponent, out_guard)


def linear_weight_grad(
    e: torch.Tensor,
    x: torch.Tensor,
    *,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """eᵀ @ x by ``_int_mm``; uint8 x goes first (``_int_mm`` takes uint8 only on the left)."""
    if x.dtype == torch.uint8:
        return to_output(_mm(x.t(), e, out_dtype), out_exponent, out_guard).t().contiguous()
    return to_output(_mm(e.t(), x, out_dtype), out_exponent, out_guard)


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
    """oneDNN u8·s8 convolution; im2col GEMM where no bound proves the oneDNN path exact."""
    # grouped convolutions with zero point 128 were wrong in oneDNN 3.12 even unpadded; so were
    # strided ones with an output 1 wide or high, grouped or not (found by tests/test_kernels.py's
    # hypothesis search: 2 groups, a 5×3 input, 3×3 kernel, stride (1, 2): output 3×1)
    if (
        _onednn_exact()
        and not _gemm_is_faster(x.shape, w.shape, stride, "forward")
        and (x.dtype == torch.uint8 or groups == 1)
        and all(
            conv_out_size(x.shape[2 + i], w.shape[2 + i], stride[i], padding[i], dilation[i]) > 1
            for i in range(2)
        )
    ):
        xu, zp, pad = onednn.as_uint8(x, padding)
        y = onednn.onednn_conv(
            xu,
            zp,
            w.contiguous(),
            stride,
            pad,
            dilation,
            groups,
            terms=w.shape[1] * w.shape[2] * w.shape[3],
            out_dtype=out_dtype,
            out_exponent=out_exponent,
            out_guard=out_guard,
        )
        if y is not None:
            return y
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


def _gemm_is_faster(input_size: Sequence[int], w_shape: Sequence[int], stride, direction: str):
    """Whether the im2col GEMM form beats oneDNN for this convolution (both are exact).

    oneDNN re-packs the weights on every call (about 1.9 ns a weight byte here; 4.6 ms for
    512×512×3×3) and runs a strided input gradient as s² phases whose sums float32 cannot hold
    (blocks); the GEMM forms pay per input position instead (im2col, col2im). So the GEMM wins
    where the weights outweigh the input positions N·H·W. Measured, 2 threads, 3×3 kernels
    (forward | two-plane input gradient over 2N images; ms, oneDNN / GEMM): 64 ch at 28², batch
    16: 1.5/2.6 | 19.7/38.1; 128 at 14²: 1.4/1.6 | 6.1/10.2; 256 at 7²: 2.8/1.4 | 8.4/5.6; 512
    at 4²: 7.6/1.4 | 22.5/5.4; strided 64→128 at 28²: 1.0/1.0 | 20.8/8.1; 32→64 at 16², batch
    128: 1.2/1.6 | 11.9/8.2; 16→32 at 32², batch 128: 0.9/3.1 | 5.3/32.9."""
    n, _, h, w = input_size  # the images of this call: both E2 planes count (2N)
    weights = w_shape[0] * w_shape[1] * w_shape[2] * w_shape[3]
    if direction == "forward":
        return n * h * w < 0.012 * weights
    return n * h * w < (4 if tuple(stride) != (1, 1) else 0.024) * weights


def _onednn_input_grad(
    w: torch.Tensor, stride: Pair, groups: int, input_size: Sequence[int]
) -> bool:
    """Whether an input gradient takes the oneDNN phase form: the error enters oneDNN with zero
    point 128, which grouped convolutions got wrong; a 1×1 strided one is a plain GEMM, and so
    is one where the GEMM measured faster (``_gemm_is_faster``)."""
    one_by_one = w.shape[2] == w.shape[3] == 1
    return (
        _onednn_exact()
        and groups == 1
        and not (one_by_one and stride != (1, 1))
        and not _gemm_is_faster(input_size, w.shape, stride, "input")
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
    """Phase-decomposed oneDNN convolution; 1×1 strided (and fallback) by GEMM + scatter."""
    if _onednn_input_grad(w, stride, groups, input_size):
        dx = onednn.phase_input_grad(
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
        )
        if dx is not None:
            return dx
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


def conv2d_input_grad_planes(
    both: torch.Tensor,
    w: torch.Tensor,
    input_size: Sequence[int],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
    *,
    shift: int,
    out_dtype: torch.dtype,
    out_exponent: Exponent | None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Two planes' input gradient with their sum inside oneDNN (``onednn.qconv_planes``); None
    where that form does not apply (the backend then adds the planes in torch)."""
    size2 = (both.shape[0], *input_size[1:])  # the backend's fallback decides on the same
    if not (
        _onednn_input_grad(w, stride, groups, size2)
        and _probed("onednn_planes", onednn.probe_planes)
    ):
        return None
    return onednn.phase_input_grad(
        both,
        w,
        input_size,
        stride,
        padding,
        dilation,
        groups,
        out_dtype=out_dtype,
        out_exponent=out_exponent,
        out_guard=out_guard,
        planes_shift=shift,
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
    """``_int_mm`` on im2col columns; the im2col-free form where it measured faster."""
    n, c, h, wd = x.shape
    _, _, ho, wo = e.shape
    grid = (h + 2 * padding[0]) * (wd + 2 * padding[1])
    # measured (one thread, batch 128): 16 ch at 32×32 (grid 1.13× the output) 4.7 ms against
    # 8.8 with im2col, 32 ch at 16×16 (1.27×) 3.1 against 3.7, 64 ch at 8×8 (1.56×) 3.1 against 2.2
    if stride == (1, 1) and groups == 1 and c <= 64 and grid <= 1.4 * ho * wo:
        return implicit_weight_grad(
            x,
            e,
            weight_size,
            padding,
            dilation,
            out_dtype=out_dtype,
            out_exponent=out_exponent,
            out_guard=out_guard,
            mm=_mm,
        )
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
