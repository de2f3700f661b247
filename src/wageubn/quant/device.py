"""The quantizers without host synchronization: scales and exponents as 0-dim device tensors.

Everything here is the arithmetic of ``wageubn.quant.functions`` (docs/WAGEUBN.md §1), value for
value, written so that nothing is ever read back to the host:

* the exact exponent arithmetic of ``wageubn.quant.exponents`` (``round_log2``, ``ldexp``,
  ``pow2``, ``nan_guard``, ``flat``; re-exported here);
* the quantizer kernels — ``direct``, ``clipped``, ``shift``, ``flag``, ``constant``, ``fit`` and
  the two int8 planes of E2 — each one reduction (``max|x|``) plus one elementwise pass.

NaN and Inf are not raised here (that would need a host read per quantizer). They propagate
instead: a per-tensor scale built from a non-finite ``max|x|`` carries ``amax − amax`` (NaN) into
every output element, so a bad value reaches the loss and the gradients, where ``QSGD`` checks once
per step before it writes anything (docs/WAGEUBN.md §7). The public functions in
``wageubn.quant.functions`` still check eagerly: they are the standalone API.

Kernels take 1-D tensors (``flat`` gives any dense tensor's elements in memory order as a view) so
that one compiled kernel serves every shape; see ``wageubn.quant.fusion`` for how they compile.
"""

from __future__ import annotations

import torch

from .exponents import (
    bound,
    const,
    exp2i,
    flat,
    is_dense,
    ldexp,
    nan_guard,
    pow2,
    round_log2,
    unflat,
)
from .fusion import fused

__all__ = [
    "bound",
    "clipped",
    "const",
    "constant",
    "decode",
    "direct",
    "error2_planes",
    "exp2i",
    "fit",
    "fit_exponent",
    "flag",
    "flat",
    "is_dense",
    "ldexp",
    "nan_guard",
    "pow2",
    "q_clipped",
    "q_constant",
    "constant_channels",
    "q_direct",
    "q_error2",
    "q_error2_rows",
    "q_fit",
    "q_flag",
    "q_shift",
    "round_log2",
    "shift",
    "unflat",
]

# -- the quantizer kernels: 1-D input, constants as 0-dim tensors of the input's dtype ----------


@fused
def direct(x: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """``Q(x, k) = round(x · 2^(k−1)) · 2^(1−k)``; ``up``/``down`` are ``2^(±(k−1))``."""
    return torch.round(x * up) * down


@fused
def clipped(
    x: torch.Tensor, up: torch.Tensor, down: torch.Tensor, limit: torch.Tensor
) -> torch.Tensor:
    """``QC(x, k) = clip(Q(x, k), −limit, limit)`` with ``limit = 1 − 2^(1−k)`` (rounded toward 0)."""
    return torch.clamp(torch.round(x * up) * down, -limit, limit)


@fused
def shift(x: torch.Tensor, bits: int, limit: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``SQ(x, k) = R · clip(round(x / R · 2^(k−1)), ±limit) · 2^(1−k)`` and ``r`` (``R = 2^r``)
    (then the scale factors, see ``pow2``).

    ``limit`` is ``2^(k−1)`` (the paper's clip at ±1) or ``2^(k−1) − 1`` (int8 codes)."""
    amax = x.abs().amax()
    r = round_log2(amax)
    up = pow2((bits - 1) - r, x.dtype)
    down = pow2(r - (bits - 1), x.dtype)
    guard = nan_guard(amax)
    codes = torch.clamp(torch.round(x * up[0] * up[1]), -limit, limit)
    return codes * down[0] * down[1] + guard, r, *up, *down, guard


@fused
def flag(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, ...]:
    """``FQ(x, k)`` and ``r``: with ``s = R/2^(k−1)`` and ``y = x/s``, ``|y| < 1`` takes
    ``clip(round(|y|·2^(k−1)), 0, 2^(k−1)) · 2^(1−k)`` and ``|y| ≥ 1`` takes
    ``clip(round(|y|), 0, 2^(k−1) − 1)``; the result is ``s · sign(y) · that``.

    Computed without ``|y|`` and ``sign(y)``: ``round`` (half to even) is odd, so
    ``sign(y)·clip(round(|y|·L), 0, L) = clip(round(y·L), −L, L)`` (likewise the coarse regime),
    and the sign of a zero is lost to the final ``+ guard`` either way."""
    amax = x.abs().amax()
    r = round_log2(amax)
    up = pow2((bits - 1) - r, x.dtype)
    down = pow2(r - (bits - 1), x.dtype)
    guard = nan_guard(amax)
    y = x * up[0] * up[1]
    levels = 2.0 ** (bits - 1)
    fine = torch.clamp(torch.round(y * levels), -levels, levels) * (1.0 / levels)
    top = bound(levels - 1.0, x.dtype)  # k >= 25 in float32: 2^(k−1) − 1 is not representable
    coarse = torch.clamp(torch.round(y), -top, top)
    m = torch.where(torch.abs(y) < 1.0, fine, coarse)
    return m * down[0] * down[1] + guard, r, *up, *down, guard


@fused
def constant(
    x: torch.Tensor,
    u: torch.Tensor | None,
    bits: int,
    dr: torch.Tensor,
    dr_limit: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """``CQ(x, k, dr) = clip(SR(dr · x / R), ±(dr − 1)) · 2^(−2(k−1))``: ``x / R`` first (exact),
    then times ``dr``. ``u`` holds the uniform draws of ``SR`` (``None``: round to nearest)."""
    amax = x.abs().amax()
    return cq(x, amax, u, bits, dr, dr_limit), *pow2(-round_log2(amax), x.dtype), nan_guard(amax)


def cq(
    x: torch.Tensor,
    amax: torch.Tensor,
    u: torch.Tensor | None,
    bits: int,
    dr: torch.Tensor,
    limit: torch.Tensor,
) -> torch.Tensor:
    """``CQ``'s values ``clip(SR(dr · x / R), ±limit) · 2^(−2(k−1))`` with ``R = 2^round(log2 amax)``
    (``amax`` 0-dim, or broadcasting per channel; a non-finite ``amax`` makes them NaN); ``u`` the
    draws (None: round to nearest)."""
    inv = pow2(-round_log2(amax), x.dtype)
    v = x * inv[0] * inv[1] * dr
    if u is None:
        n = torch.round(v)
    else:
        fl = torch.floor(v)
        n = fl + (u < v - fl).to(v.dtype)
    return torch.clamp(n, -limit, limit) * (2.0 ** (-2 * (bits - 1))) + nan_guard(amax)


def channel_amax(x: torch.Tensor) -> torch.Tensor:
    """``max |x[i]|`` for every slice along dim 0, shaped to broadcast against ``x``."""
    return x.abs().amax(dim=tuple(range(1, x.dim())), keepdim=True)


@fused
def constant_channels(
    x: torch.Tensor, u: torch.Tensor | None, bits: int, dr: torch.Tensor, dr_limit: torch.Tensor
) -> torch.Tensor:
    """``CQ`` with one ``R`` per output channel (``x`` of 2+ dims, any layout; ``u`` the draws in
    ``x``'s shape): ``CQ(x[i], k, dr)`` for every ``i``. A non-finite channel is NaN."""
    return cq(x, channel_amax(x), u, bits, dr, dr_limit)


def fit_exponent(amax: torch.Tensor, bits: int) -> torch.Tensor:
    """The ``int8``-mode exponent of A from ``amax = max|x|`` (int64): the smallest ``e`` with
    ``amax <= (2^(k−1) − 1) · 2^e``, and never below ``1 − k``.

    ``round(log2 amax) = r`` gives ``amax >= 2^(r−1/2) > top·2^(r−k)``, so ``e`` is one of the
    three exponents above ``r − k``: the answer counts how many of them are still too small."""
    top = float(2 ** (bits - 1) - 1)
    e0 = round_log2(amax) - bits
    dtype = torch.float64 if amax.dtype == torch.float64 else torch.float32
    a = amax.to(dtype)
    step = sum((a > ldexp(torch.full_like(a, top), e0 + i)).to(torch.int64) for i in range(3))
    return torch.clamp(e0 + step, min=1 - bits)


@fused
def fit(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, ...]:
    """A in ``int8`` mode: int8 codes ``round(x / 2^e)`` (within ±(2^(k−1) − 1)), ``e``
    (``fit_exponent``), and the NaN guard of ``max|x|`` (0, or NaN when ``x`` was not finite)."""
    amax = x.abs().amax()
    e = fit_exponent(amax, bits)
    down = pow2(-e, x.dtype)
    guard = nan_guard(amax)
    codes = torch.round(x * down[0] * down[1]).to(torch.int8)
    return codes, e, guard, *down


@fused
def error2_planes(g: torch.Tensor, bits: int) -> tuple[torch.Tensor, ...]:
    """E2 = FQ(g, k) as int8 ``(coarse, fine)`` with ``FQ = coarse·2^e + fine·2^(e−k+1)``, ``e``,
    and the NaN guard. ``f = round(g/s·2^(k−1))``, ``c = round(g/s)``: ``|f| < 2^(k−1)`` is the
    fine regime, else coarse (where ``c = ±1`` also covers fine codes that round up to ±2^(k−1))."""
    return _error2(g, bits)


def _error2(g: torch.Tensor, bits: int) -> tuple[torch.Tensor, ...]:
    amax = g.abs().amax()
    r = round_log2(amax)
    top = float(2 ** (bits - 1) - 1)
    up = pow2((bits - 1) - r, g.dtype)
    guard = nan_guard(amax)
    c_raw = torch.round(g * up[0] * up[1])
    f = torch.round(g * up[0] * up[1] * (2.0 ** (bits - 1)))
    c = torch.clamp(c_raw, -top, top)
    coarse_regime = f.abs() > top
    fine_codes = torch.where(coarse_regime, 0.0, f).to(torch.int8)
    coarse_codes = torch.where(coarse_regime, c, 0.0).to(torch.int8)
    return coarse_codes, fine_codes, r - (bits - 1), guard, *up


@fused
def error2_rows(g2: torch.Tensor, bits: int) -> tuple[torch.Tensor, ...]:
    """``error2_planes`` of a 2-D ``(rows, channels)`` gradient, with the planes laid out for the
    products: ``major`` ``(2, rows, C)`` (coarse then fine: one batch for the input gradient) and
    ``side`` ``(rows, 2, C)`` (side by side: one GEMM for the weight gradient); then ``e`` and
    the NaN guard."""
    coarse, fine, e, guard, up0, up1 = _error2(g2, bits)
    return torch.stack([coarse, fine]), torch.stack([coarse, fine], dim=1), e, guard, up0, up1


# -- the quantizers on tensors of any shape and layout (the sync-free entry points) -------------


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _c(value: float, dtype: torch.dtype, x: torch.Tensor, tag: str) -> torch.Tensor:
    return const(float(value), dtype, x.device, tag)


def _run(kernel, x: torch.Tensor, *args):
    """``kernel(flat(x), *args)`` in float32/float64; tensor outputs of ``x``'s size come back in
    ``x``'s shape, layout and (for float outputs) dtype."""
    dtype = _compute_dtype(x)
    xf = flat(x if x.dtype == dtype else x.to(dtype))
    out = kernel(xf, *args)
    like = x if x.dtype == dtype else x.to(dtype)

    def back(t):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() != x.numel():
            return t
        t = unflat(t, like)
        return t.to(x.dtype) if t.is_floating_point() and t.dtype != x.dtype else t

    return tuple(back(t) for t in out) if isinstance(out, tuple) else back(out)


def q_direct(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``Q(x, k)`` on any tensor, without host reads (NaN/Inf propagate)."""
    if x.numel() == 0:
        return x.clone()
    dt = _compute_dtype(x)
    return _run(direct, x, _c(2.0 ** (bits - 1), dt, x, "up"), _c(2.0 ** (1 - bits), dt, x, "down"))


def q_clipped(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``QC(x, k)`` on any tensor, without host reads."""
    if x.numel() == 0:
        return x.clone()
    dt = _compute_dtype(x)
    up, down = _c(2.0 ** (bits - 1), dt, x, "up"), _c(2.0 ** (1 - bits), dt, x, "down")
    return _run(clipped, x, up, down, _c(bound(1.0 - 2.0 ** (1 - bits), dt), dt, x, "limit"))


def q_shift(
    x: torch.Tensor, bits: int, narrow_range: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``SQ(x, k)`` and ``r`` (``R(x) = 2^r``; meaningless for an all-zero ``x``)."""
    if x.numel() == 0:
        return x.clone(), torch.zeros((), dtype=torch.int64, device=x.device)
    dt = _compute_dtype(x)
    levels = 2.0 ** (bits - 1)
    limit = _c(bound(levels - 1, dt) if narrow_range else levels, dt, x, "limit")
    return _run(shift, x, bits, limit)[:2]


def q_flag(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``FQ(x, k)`` and ``r``."""
    if x.numel() == 0:
        return x.clone(), torch.zeros((), dtype=torch.int64, device=x.device)
    return _run(flag, x, bits)[:2]


def q_constant(
    x: torch.Tensor,
    bits: int,
    dr: int,
    *,
    generator: torch.Generator | None = None,
    rounding: str = "stochastic",
    scale: str = "tensor",
) -> torch.Tensor:
    """``CQ(x, k, dr)``; the uniform draws are ``torch.rand(x.shape, generator=generator)`` in
    ``x``'s dtype, element ``i`` of the draws for logical element ``i`` of ``x``. ``scale``:
    ``"tensor"`` (one ``R(x)``) or ``"channel"`` (one ``R`` per slice ``x[i]``; a tensor of
    fewer than 2 dims has one)."""
    if x.numel() == 0:
        return x.clone()
    dt = _compute_dtype(x)
    u = None
    if rounding == "stochastic":
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if not x.is_contiguous():  # the draws follow x's layout, element by element
            u = torch.empty_like(x).copy_(u)
    limits = _c(dr, dt, x, "dr"), _c(dr - 1, dt, x, "limit")
    if scale == "channel" and x.dim() > 1:
        xd = x.detach() if x.dtype == dt else x.detach().to(dt)
        out = constant_channels(xd, None if u is None else u.to(dt), bits, *limits)
        return out.to(x.dtype)
    return _run(constant, x, None if u is None else flat(u.to(dt)), bits, *limits)[0]


def decode(codes: torch.Tensor, e: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``codes · 2^e`` as ``dtype`` (computed in float32/float64; exact while it is representable)."""
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    return ldexp(codes.to(wide), e).to(dtype)


def q_fit(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A of the ``int8`` mode: int8 codes (``x``'s layout), exponent ``e`` and NaN guard."""
    if x.numel() == 0:
        zero = torch.zeros((), dtype=torch.int64, device=x.device)
        return x.to(torch.int8), zero + (1 - bits), torch.zeros((), device=x.device)
    return _run(fit, x, bits)[:3]


def q_error2_rows(
    g: torch.Tensor, bits: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """E2 of the ``int8`` mode with the planes laid out for the products (``error2_rows``) for a
    gradient ``(N, C, H, W)`` (its channels_last rows ``N·H·W × C``) or ``(M, C)``."""
    if g.dim() == 4:
        rows = g.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        rows = rows.reshape(-1, g.shape[1])
    else:
        rows = g.reshape(-1, g.shape[-1]).contiguous()
    major, side, e, guard = error2_rows(rows.detach(), bits)[:4]
    return major, side, e, guard


def q_error2(
    g: torch.Tensor, bits: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """E2 of the ``int8`` mode: int8 ``(coarse, fine)`` planes in ``g``'s layout, ``e``, guard."""
    if g.numel() == 0:
        zero = torch.zeros((), dtype=torch.int64, device=g.device)
        return g.to(torch.int8), g.to(torch.int8), zero, torch.zeros((), device=g.device)
    return _run(error2_planes, g, bits)[:4]
