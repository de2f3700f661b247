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
``_int_mm`` formulations below, which are equally exact.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import reference
from .gemm_conv import (
    _padded_nhwc,
    gemm_conv2d_forward,
    gemm_conv2d_input_grad,
    gemm_conv2d_weight_grad,
    to_output,
)
from .reference import (
    FLOAT_EXACT,
    INT32_MAX,
    code_max,
    scale_tensor,
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
    return _probed("onednn", _probe_onednn)


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


def _probe_onednn() -> bool:
    """oneDNN's u8·s8 convolution exists and is exact here on extreme codes.

    Without AVX512-VNNI, oneDNN pairs u8·s8 products in saturating int16 and is then inexact;
    this probe catches that before any result is returned.
    """
    onednn = getattr(torch.ops, "onednn", None)
    if not torch.backends.mkldnn.is_available() or not hasattr(onednn, "qconv2d_pointwise"):
        return False
    w = torch.full((8, 32, 3, 3), -128, dtype=torch.int8)
    w[1::2, ::2] = 127
    cases = [
        (torch.full((1, 32, 5, 5), 255, dtype=torch.uint8), w, (1, 1), (1, 1), 1),
        (
            torch.full((1, 3, 9, 9), 255, dtype=torch.uint8),
            w[:, :3].repeat(1, 1, 3, 3)[..., :7, :7],
            (2, 2),
            (3, 3),
            1,
        ),
        (torch.full((1, 8, 5, 5), 255, dtype=torch.uint8), w[:, :1], (1, 1), (1, 1), 8),
        (torch.full((1, 32, 5, 5), -128, dtype=torch.int8), w, (1, 1), (2, 2), 1),
    ]
    try:
        for x, wt, stride, padding, groups in cases:
            xu, zp, pad = _as_uint8(x, padding)
            got = _qconv(xu, zp, wt.contiguous(), stride, pad, (1, 1), groups, 0)
            want = reference.conv2d_forward(
                x, wt, stride, padding, (1, 1), groups, out_dtype=torch.int64, out_exponent=None
            )
            if not torch.equal(got, want.to(torch.float32)):
                log.warning("oneDNN int8 convolution is inexact on this CPU; using _int_mm")
                return False
    except RuntimeError as err:  # op signature differs in this torch: not usable
        log.warning("oneDNN int8 convolution unusable (%s); using _int_mm", err)
        return False
    return True


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


def _as_uint8(x: torch.Tensor, padding=(0, 0)):
    """Codes as channels_last uint8, zero point, and the padding oneDNN should still apply.

    uint8 codes go as they are (zero point 0). int8 codes go as ``code + 128`` with zero point
    128, already padded with 128 (that is, code 0): oneDNN's zero-point padding was wrong for
    some shapes, so it never sees padding with a zero point (see ``_qconv``).
    """
    if x.dtype == torch.uint8:
        return x.contiguous(memory_format=CL), 0, padding
    n, c, h, w = x.shape
    ph, pw = padding
    buf = torch.full((n, h + 2 * ph, w + 2 * pw, c), 128, dtype=torch.uint8)
    # flipping the sign bit of an int8 byte is adding 128 to its value, read as uint8
    torch.bitwise_xor(
        x.view(torch.uint8).permute(0, 2, 3, 1), 128, out=buf[:, ph : ph + h, pw : pw + w]
    )
    return buf.permute(0, 3, 1, 2), 128, (0, 0)


def _qconv(xu, zp, w, stride, padding, dilation, groups, exponent, scale=None) -> torch.Tensor:
    """One oneDNN u8·s8 convolution, float32 channels_last out = ``acc · 2^exponent`` (or
    ``acc · scale`` for a 0-dim float32 ``scale`` tensor, read by oneDNN on the device)."""
    o = w.shape[0]
    if padding != (0, 0) and (
        zp != 0
        or max(dilation) > 1
        or any(p > d * (k - 1) for p, d, k in zip(padding, dilation, w.shape[2:], strict=True))
    ):
        # Measured with torch 2.14 / oneDNN 3.12: output windows lying wholly in the padding
        # (padding wider than the kernel, or dilation skipping the interior) came back as
        # garbage; zero-point padding was wrong in such windows too. Pad explicitly instead.
        pad = (padding[1], padding[1], padding[0], padding[0])
        xu = F.pad(xu, pad, value=zp).contiguous(memory_format=CL)
        padding = (0, 0)
    if scale is None:
        e_x = exponent // 2  # split the scale so each factor is a normal float32
        w_scale = torch.full((o,), 2.0 ** (exponent - e_x), dtype=torch.float32)
    else:
        e_x = 0
        w_scale = scale.to(torch.float32).reshape(1).expand(o).contiguous()
    w_zp = torch.zeros((o,), dtype=torch.int64)
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    packed = torch.ops.onednn.qconv_prepack(
        w, w_scale, 2.0**e_x, zp, stride, padding, dilation, groups, list(xu.shape)
    )
    return torch.ops.onednn.qconv2d_pointwise(
        xu,
        2.0**e_x,
        zp,
        packed,
        w_scale,
        w_zp,
        None,
        stride,
        padding,
        dilation,
        groups,
        1.0,
        0,
        torch.float32,
        "none",
        [],
        "",
    )


def _qconv_digits(xu, zp, w, stride, padding, dilation, groups, out_dtype) -> torch.Tensor:
    """Exact integer conv when float32 cannot hold the accumulator: ``w = 16·hi + lo`` with
    ``hi ∈ [−8, 8]``, ``lo ∈ [−8, 7]``; one call with both digit planes as 2·O channels."""
    o = w.shape[0]
    og = o // groups
    w16 = w.to(torch.int16)
    hi = torch.div(w16 + 8, 16, rounding_mode="floor")
    lo = w16 - 16 * hi
    both = torch.stack([hi, lo]).reshape(2, groups, og, *w.shape[1:]).transpose(0, 1)
    both = both.reshape(2 * o, *w.shape[1:]).to(torch.int8)
    y = _qconv(xu, zp, both, stride, padding, dilation, groups, 0)  # (N, 2O, Ho, Wo)
    n, _, ho, wo = y.shape
    y = y.permute(0, 2, 3, 1).reshape(n, ho, wo, groups, 2, og)
    acc = torch.empty((n, ho, wo, groups, og), dtype=out_dtype)
    acc.copy_(y[..., 0, :]).mul_(16).add_(y[..., 1, :].to(out_dtype))
    return acc.view(n, ho, wo, o).permute(0, 3, 1, 2)


def _onednn_conv(
    xu, zp, w, stride, padding, dilation, groups, *, terms, out_dtype, out_exponent, out_guard=None
):
    """Exact result through oneDNN, or None when no bound proves it exact (caller uses GEMM)."""
    if terms * 255 * 128 > INT32_MAX:  # oneDNN's own int32 accumulator of u8 · s8
        return None
    bound = terms * (255 if zp == 0 else 128) * 128
    if out_exponent is not None and (
        isinstance(out_exponent, torch.Tensor) or out_guard is not None
    ):
        # a device-side exponent: oneDNN scales its exact int32 accumulator by a float32 tensor
        scale = scale_tensor(out_exponent, out_guard, torch.float32, xu.device)
        return _qconv(xu, zp, w, stride, padding, dilation, groups, 0, scale)
    if (
        out_exponent is not None
        and -126 <= out_exponent
        and out_exponent + bound.bit_length() < 128
    ):
        return _qconv(xu, zp, w, stride, padding, dilation, groups, out_exponent)
    if bound <= FLOAT_EXACT:
        acc = _qconv(xu, zp, w, stride, padding, dilation, groups, 0).to(out_dtype)
    elif bound // 16 <= FLOAT_EXACT:  # digits are at most 8 in magnitude, 128 / 8 = 16
        acc = _qconv_digits(xu, zp, w, stride, padding, dilation, groups, out_dtype)
    else:
        return None
    return to_output(acc, out_exponent, out_guard)


# ----------------------------------------------------------------------------- CPU-only forms


def _implicit_weight_grad(
    x, e, weight_size, padding, dilation, *, out_dtype, out_exponent, out_guard=None
):
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
            res[i, j] = _mm(flat_x[off : off + length].t(), flat_e[:length], out_dtype)
    return to_output(res.permute(3, 2, 0, 1).contiguous(), out_exponent)


def _phase_plan(k: int, s: int, d: int, p: int, size: int, n_out: int):
    """One spatial dimension of the input gradient as a stride-1 correlation per phase.

    Tap ``i`` adds ``e[q − t_i] · w[i]`` to padded row ``s·q + r_i`` with ``t_i = i·d // s``,
    ``r_i = i·d % s``; in the combined kernel it sits at ``a_i = (t_last − t_i) / δ``.
    """
    t = [(i * d) // s for i in range(k)]
    lead = t[-1]
    delta = math.gcd(*(lead - ti for ti in t)) or 1
    q0, q1 = p // s, (p + size - 1) // s  # padded rows p .. p+size-1 live in phases q0 .. q1
    pad = max(0, lead - q0, q1 - n_out + 1)
    return dict(
        phase=[(i * d) % s for i in range(k)],
        pos=[(lead - ti) // delta for ti in t],
        kt=lead // delta + 1,
        delta=delta,
        pad=pad,
        shift=pad - lead,
    )


def _phase_input_grad(
    e, w, input_size, stride, padding, dilation, groups, *, out_dtype, out_exponent, out_guard=None
):
    """Input gradient through oneDNN: one stride-1 conv with ``s_h·s_w·C`` output channels whose
    kernel holds the flipped taps of every phase, then each phase copied to its strided rows."""
    n, o, ho, wo = e.shape
    _, cg, kh, kw = w.shape
    og, c = o // groups, cg * groups
    h, wd = input_size[2], input_size[3]
    ph = _phase_plan(kh, stride[0], dilation[0], padding[0], h, ho)
    pw = _phase_plan(kw, stride[1], dilation[1], padding[1], wd, wo)
    sh, sw = stride
    wc = torch.zeros((groups, cg, sh, sw, og, ph["kt"], pw["kt"]), dtype=torch.int8)
    wg = w.reshape(groups, og, cg, kh, kw)
    for i in range(kh):
        for j in range(kw):
            wc[:, :, ph["phase"][i], pw["phase"][j], :, ph["pos"][i], pw["pos"][j]] = wg[
                :, :, :, i, j
            ].transpose(1, 2)
    wc = wc.reshape(c * sh * sw, og, ph["kt"], pw["kt"])
    eu, zp, pad = _as_uint8(e, (ph["pad"], pw["pad"]))
    y = _onednn_conv(
        eu,
        zp,
        wc,
        (1, 1),
        pad,
        (ph["delta"], pw["delta"]),
        groups,
        terms=og * kh * kw,
        out_dtype=out_dtype,
        out_exponent=out_exponent,
        out_guard=out_guard,
    )
    if y is None:
        return None
    if stride == (1, 1):
        u, v = ph["shift"], pw["shift"]  # padded row p is output row p + shift
        y = y[:, :, padding[0] + u : padding[0] + u + h, padding[1] + v : padding[1] + v + wd]
        return y.contiguous(memory_format=CL)
    yv = y.contiguous(memory_format=CL).permute(0, 2, 3, 1)
    yv = yv.reshape(n, yv.shape[1], yv.shape[2], c, sh, sw)
    out = torch.empty((n, h, wd, c), dtype=y.dtype)
    for rh in range(sh):
        h0 = (rh - padding[0]) % sh  # first input row whose padded index is in phase rh
        if h0 >= h:
            continue
        u = (h0 + padding[0]) // sh + ph["shift"]
        cnt_h = len(range(h0, h, sh))
        for rw in range(sw):
            w0 = (rw - padding[1]) % sw
            if w0 >= wd:
                continue
            v = (w0 + padding[1]) // sw + pw["shift"]
            cnt_w = len(range(w0, wd, sw))
            out[:, h0::sh, w0::sw] = yv[:, u : u + cnt_h, v : v + cnt_w, :, rh, rw]
    return out.permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------ public


def linear_forward(x, w, *, out_dtype, out_exponent, out_guard=None):
    """x @ wᵀ by ``_int_mm`` (wᵀ is a view)."""
    return to_output(_mm(x, w.t(), out_dtype), out_exponent, out_guard)


def linear_input_grad(e, w, *, out_dtype, out_exponent, out_guard=None):
    """e @ w by ``_int_mm``."""
    return to_output(_mm(e, w, out_dtype), out_exponent, out_guard)


def linear_weight_grad(e, x, *, out_dtype, out_exponent, out_guard=None):
    """eᵀ @ x by ``_int_mm``; uint8 x goes first (``_int_mm`` takes uint8 only on the left)."""
    if x.dtype == torch.uint8:
        return to_output(_mm(x.t(), e, out_dtype), out_exponent, out_guard).t().contiguous()
    return to_output(_mm(e.t(), x, out_dtype), out_exponent, out_guard)


def conv2d_forward(
    x, w, stride, padding, dilation, groups, *, out_dtype, out_exponent, out_guard=None
):
    """oneDNN u8·s8 convolution; im2col GEMM where no bound proves the oneDNN path exact."""
    # grouped convolutions with zero point 128 were wrong in oneDNN 3.12 even unpadded
    if _onednn_exact() and (x.dtype == torch.uint8 or groups == 1):
        xu, zp, pad = _as_uint8(x, padding)
        y = _onednn_conv(
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


def conv2d_input_grad(
    e, w, input_size, stride, padding, dilation, groups, *, out_dtype, out_exponent, out_guard=None
):
    """Phase-decomposed oneDNN convolution; 1×1 strided (and fallback) by GEMM + scatter."""
    one_by_one = w.shape[2] == w.shape[3] == 1
    # the error enters oneDNN with zero point 128, which grouped convolutions got wrong
    if _onednn_exact() and groups == 1 and not (one_by_one and stride != (1, 1)):
        dx = _phase_input_grad(
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


def conv2d_weight_grad(
    x, e, weight_size, stride, padding, dilation, groups, *, out_dtype, out_exponent, out_guard=None
):
    """``_int_mm`` on im2col columns; the im2col-free form where it measured faster."""
    n, c, h, wd = x.shape
    _, _, ho, wo = e.shape
    grid = (h + 2 * padding[0]) * (wd + 2 * padding[1])
    if stride == (1, 1) and groups == 1 and c <= 64 and grid <= 1.2 * ho * wo:
        return _implicit_weight_grad(
            x,
            e,
            weight_size,
            padding,
            dilation,
            out_dtype=out_dtype,
            out_exponent=out_exponent,
            out_guard=out_guard,
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
