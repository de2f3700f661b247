"""The oneDNN formulations of the CPU backend: u8·s8 ``qconv2d_pointwise`` convolutions.

* ``probe_exact()`` — whether oneDNN's int8 convolution exists here and is exact on extreme codes
  (without AVX512-VNNI it pairs u8·s8 products in saturating int16); ``kernels.cpu`` runs it once
  and uses these forms only when it passed;
* ``as_uint8`` / ``qconv`` / ``qconv_digits`` / ``onednn_conv`` — the forward convolution:
  int8 codes enter as ``code + 128`` with zero point 128, the int32 accumulator is exact in
  float32 below 2^24, above that the weights split into two base-16 digits;
* ``phase_plan`` / ``phase_input_grad`` — the input gradient of a strided convolution as one
  stride-1 convolution with ``s²·C`` output channels, then a depth-to-space copy.

Each returns ``None`` where no bound proves it exact; ``kernels.cpu`` then takes the GEMM forms.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from . import reference
from .gemm_conv import to_output
from .reference import FLOAT_EXACT, INT32_MAX, scale_exact, scale_tensor

__all__ = [
    "as_uint8",
    "onednn_conv",
    "phase_input_grad",
    "phase_plan",
    "probe_exact",
    "probe_planes",
    "qconv",
    "qconv_digits",
    "qconv_planes",
    "qconv_planes_blocked",
]

log = logging.getLogger("wageubn.kernels.cpu")  # the probe's warnings, as before the split

CL = torch.channels_last


def probe_exact() -> bool:
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
            xu, zp, pad = as_uint8(x, padding)
            got = qconv(xu, zp, wt.contiguous(), stride, pad, (1, 1), groups, 0)
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


def as_uint8(x: torch.Tensor, padding=(0, 0)):
    """Codes as channels_last uint8, zero point, and the padding oneDNN should still apply.

    uint8 codes go as they are (zero point 0). int8 codes go as ``code + 128`` with zero point
    128, already padded with 128 (that is, code 0): oneDNN's zero-point padding was wrong for
    some shapes, so it never sees padding with a zero point (see ``qconv``).
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


def _safe_padding(xu, zp, w, padding, dilation):
    """``(xu, padding)`` with the padding applied explicitly where oneDNN's own was wrong.

    Measured with torch 2.14 / oneDNN 3.12: output windows lying wholly in the padding (padding
    wider than the kernel, or dilation skipping the interior) came back as garbage; zero-point
    padding was wrong in such windows too."""
    if padding != (0, 0) and (
        zp != 0
        or max(dilation) > 1
        or any(p > d * (k - 1) for p, d, k in zip(padding, dilation, w.shape[2:], strict=True))
    ):
        pad = (padding[1], padding[1], padding[0], padding[0])
        return F.pad(xu, pad, value=zp).contiguous(memory_format=CL), (0, 0)
    return xu, padding


def qconv(xu, zp, w, stride, padding, dilation, groups, exponent, scale=None) -> torch.Tensor:
    """One oneDNN u8·s8 convolution, float32 channels_last out = ``acc · 2^exponent`` (or
    ``acc · scale`` for a 0-dim float32 ``scale`` tensor, read by oneDNN on the device)."""
    o = w.shape[0]
    xu, padding = _safe_padding(xu, zp, w, padding, dilation)
    if scale is None:
        e_x = exponent // 2  # split the scale so each factor is a normal float32
        w_scale = torch.full((o,), 2.0 ** (exponent - e_x), dtype=torch.float32)
    else:
        e_x = 0
        w_scale = scale.to(torch.float32).reshape(1).expand(o).contiguous()
    geometry = (list(stride), list(padding), list(dilation), groups)
    packed = _pack(w, w_scale, 2.0**e_x, zp, geometry, xu.shape)
    return _run(xu, 2.0**e_x, zp, packed, w_scale, geometry)


def _pack(w, w_scale, x_scale, zp, geometry, x_shape):
    """The weights packed by oneDNN for inputs of ``x_shape`` (``geometry``: the list form)."""
    return torch.ops.onednn.qconv_prepack(w, w_scale, x_scale, zp, *geometry, list(x_shape))


def _run(x, x_scale, zp, packed, w_scale, geometry, accum=None) -> torch.Tensor:
    """float32 ``acc · x_scale · w_scale`` of one packed convolution, plus ``accum`` (a float32
    tensor of the output's shape, added by oneDNN's sum post-op and returned) when given."""
    w_zp = torch.zeros((w_scale.shape[0],), dtype=torch.int64)
    if accum is None:
        return torch.ops.onednn.qconv2d_pointwise(
            x, x_scale, zp, packed, w_scale, w_zp, None, *geometry, 1.0, 0, torch.float32,
            "none", [], "",
        )  # fmt: skip
    return torch.ops.onednn.qconv2d_pointwise.binary(
        x, x_scale, zp, packed, w_scale, w_zp, accum, None, *geometry, 1.0, 0, torch.float32,
        1.0, 0, "sum", None, "none", [], "",
    )  # fmt: skip


def qconv_planes(xu, zp, w, stride, padding, dilation, groups, scale, shift) -> torch.Tensor:
    """``(2^shift · conv(coarse) + conv(fine)) · scale`` for ``xu`` = coarse images then fine
    ones (2N): the fine convolution's float32 output is the accumulator of the coarse one's sum
    post-op, so the addition happens inside oneDNN, rounded once (each product is exact in
    float32 when the caller has bounded the accumulators below 2^24); one weight packing."""
    n = xu.shape[0] // 2
    xu, padding = _safe_padding(xu, zp, w, padding, dilation)
    coarse, fine = xu[:n], xu[n:]
    w_scale = scale.to(torch.float32).reshape(1).expand(w.shape[0]).contiguous()
    geometry = (list(stride), list(padding), list(dilation), groups)
    packed = _pack(w, w_scale, 1.0, zp, geometry, fine.shape)
    y = _run(fine, 1.0, zp, packed, w_scale, geometry)
    return _run(coarse, 1.0, zp, packed, w_scale * float(2**shift), geometry, accum=y)


def qconv_planes_blocked(
    xu, zp, w, stride, padding, dilation, per_channel, shift, out_exponent, out_guard
) -> torch.Tensor:
    """``qconv_planes`` where float32 cannot hold a whole accumulator (``per_channel``: the
    bound one input channel adds): the input channels in blocks whose accumulators it holds, each
    block one exact float32 call over both planes (2N images), the blocks summed in float64
    (exact below 2^53), ``2^shift·coarse + fine`` scaled and rounded once. The same products as
    one call over both planes — half those of base-16 weight digits (2·O channels) on them."""
    n, cin = xu.shape[0] // 2, xu.shape[1]
    blocks = -(-cin // max(1, FLOAT_EXACT // per_channel))
    step = -(-cin // blocks)  # blocks of equal size
    acc: torch.Tensor | None = None
    for c0 in range(0, cin, step):
        part = xu[:, c0 : c0 + step].contiguous(memory_format=CL)
        y = qconv(part, zp, w[:, c0 : c0 + step].contiguous(), stride, padding, dilation, 1, 0)
        acc = y.double() if acc is None else acc.add_(y)
    assert acc is not None
    return scale_exact(acc[:n].mul_(float(2**shift)).add_(acc[n:]), out_exponent, out_guard)


def probe_planes() -> bool:
    """``qconv_planes`` (the sum post-op with a float32 accumulator) exists and is exact here,
    extreme codes included, against float64 (exact at this size)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 8, 6, 5), dtype=torch.uint8, generator=gen)
    x[0], x[2, :4] = 255, 0
    w = torch.randint(-128, 128, (3, 8, 3, 3), dtype=torch.int8, generator=gen)
    scale = torch.tensor(2.0**-9)
    try:
        got = qconv_planes(
            x.contiguous(memory_format=CL), 128, w, (1, 1), (0, 0), (1, 1), 1, scale, 7
        )
    except RuntimeError as err:  # the overload is missing or rejects these arguments
        log.warning("oneDNN's conv sum post-op is unusable (%s); the planes add in torch", err)
        return False
    acc = F.conv2d(x.double() - 128, w.double())
    want = ((acc[:2] * 2.0**7 + acc[2:]) * 2.0**-9).float()
    if not torch.equal(got, want):
        log.warning("oneDNN's conv sum post-op is inexact on this CPU; the planes add in torch")
        return False
    return True


def qconv_digits(xu, zp, w, stride, padding, dilation, groups, out_dtype) -> torch.Tensor:
    """Exact integer conv when float32 cannot hold the accumulator: ``w = 16·hi + lo`` with
    ``hi ∈ [−8, 8]``, ``lo ∈ [−8, 7]``; one call with both digit planes as 2·O channels."""
    o = w.shape[0]
    og = o // groups
    w16 = w.to(torch.int16)
    hi = torch.div(w16 + 8, 16, rounding_mode="floor")
    lo = w16 - 16 * hi
    both = torch.stack([hi, lo]).reshape(2, groups, og, *w.shape[1:]).transpose(0, 1)
    both = both.reshape(2 * o, *w.shape[1:]).to(torch.int8)
    y = qconv(xu, zp, both, stride, padding, dilation, groups, 0)  # (N, 2O, Ho, Wo)
    n, _, ho, wo = y.shape
    y = y.permute(0, 2, 3, 1).reshape(n, ho, wo, groups, 2, og)
    acc = torch.empty((n, ho, wo, groups, og), dtype=out_dtype)
    acc.copy_(y[..., 0, :]).mul_(16).add_(y[..., 1, :].to(out_dtype))
    return acc.view(n, ho, wo, o).permute(0, 3, 1, 2)


def onednn_conv(
    xu,
    zp,
    w,
    stride,
    padding,
    dilation,
    groups,
    *,
    terms,
    out_dtype,
    out_exponent,
    out_guard=None,
    planes_shift=None,
):
    """Exact result through oneDNN, or None when no bound proves it exact (caller uses GEMM).
    With ``planes_shift``, ``xu`` holds two planes (``qconv_planes``).

    oneDNN turns the u8·s8 sum into float32 *before* it takes the zero point's share off
    (measured: 113 input channels of a 3×3 kernel, weights −127, random int8 codes shifted by
    128 came back off by one at −250063): with zero point 128 as with 0, what float32 must hold
    is the u8 sum, up to ``255·128`` a term, not the int8 one."""
    if terms * 255 * 128 > INT32_MAX:  # oneDNN's own int32 accumulator of u8 · s8
        return None
    bound = terms * 255 * 128
    if planes_shift is not None:
        if out_exponent is None:
            return None
        if bound > FLOAT_EXACT:
            if groups != 1:
                return None
            per_channel = bound // xu.shape[1]
            return qconv_planes_blocked(
                xu, zp, w, stride, padding, dilation, per_channel, planes_shift,
                out_exponent, out_guard,
            )  # fmt: skip
        if isinstance(out_exponent, int) and not -126 <= out_exponent <= 127 - planes_shift:
            return None
        scale = scale_tensor(out_exponent, out_guard, torch.float32, xu.device)
        return qconv_planes(xu, zp, w, stride, padding, dilation, groups, scale, planes_shift)
    # one rounding of the exact sum: always without a zero point, with one while it is exact
    once = zp == 0 or bound <= FLOAT_EXACT
    if (
        once
        and out_exponent is not None
        and (isinstance(out_exponent, torch.Tensor) or out_guard is not None)
    ):
        # a device-side exponent: oneDNN scales its exact int32 accumulator by a float32 tensor
        scale = scale_tensor(out_exponent, out_guard, torch.float32, xu.device)
        return qconv(xu, zp, w, stride, padding, dilation, groups, 0, scale)
    if (
        once
        and isinstance(out_exponent, int)
        and -126 <= out_exponent
        and out_exponent + bound.bit_length() < 128
    ):
        return qconv(xu, zp, w, stride, padding, dilation, groups, out_exponent)
    if bound <= FLOAT_EXACT:
        acc = qconv(xu, zp, w, stride, padding, dilation, groups, 0).to(out_dtype)
    elif bound // 16 <= FLOAT_EXACT:  # digits are at most 8 in magnitude, 128 / 8 = 16
        acc = qconv_digits(xu, zp, w, stride, padding, dilation, groups, out_dtype)
    else:
        return None
    return to_output(acc, out_exponent, out_guard)


def phase_plan(k: int, s: int, d: int, p: int, size: int, n_out: int):
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


def phase_input_grad(
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
    planes_shift=None,
):
    """Input gradient through oneDNN: one stride-1 conv with ``s_h·s_w·C`` output channels whose
    kernel holds the flipped taps of every phase, then each phase copied to its strided rows.
    With ``planes_shift``, ``e`` is two planes of N images each (``qconv_planes``) and the
    result has N images."""
    n, o, ho, wo = e.shape
    if planes_shift is not None:
        n //= 2
    _, cg, kh, kw = w.shape
    og, c = o // groups, cg * groups
    h, wd = input_size[2], input_size[3]
    ph = phase_plan(kh, stride[0], dilation[0], padding[0], h, ho)
    pw = phase_plan(kw, stride[1], dilation[1], padding[1], wd, wo)
    sh, sw = stride
    wg = w.reshape(groups, og, cg, kh, kw)
    if stride == (1, 1):  # one phase, tap i at position k − 1 − i: the flipped kernel
        wc = wg.transpose(1, 2).flip(3, 4).reshape(c, og, kh, kw).contiguous()
    else:
        wc = torch.zeros((groups, cg, sh, sw, og, ph["kt"], pw["kt"]), dtype=torch.int8)
        for i in range(kh):
            for j in range(kw):
                wc[:, :, ph["phase"][i], pw["phase"][j], :, ph["pos"][i], pw["pos"][j]] = wg[
                    :, :, :, i, j
                ].transpose(1, 2)
        wc = wc.reshape(c * sh * sw, og, ph["kt"], pw["kt"])
    eu, zp, pad = as_uint8(e, (ph["pad"], pw["pad"]))
    y = onednn_conv(
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
        planes_shift=planes_shift,
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
