"""Fused kernels of the quantized BatchNorm and activation: one reduction and one elementwise pass.

Each function is one ``@fused`` kernel (``wageubn.quant.fusion``): compiled by default, eager
code otherwise, same values either way. Shapes: BN kernels take the input as a 3-D view
``(A, W, B)`` (``ChannelLayout``: ``(N, C, H·W)`` for contiguous input; for channels_last,
``(N·H·W / k, k·C, 1)`` — k copies of the channels side by side, so the innermost loop is long
enough to vectorize well) and per-channel vectors tiled to ``W = k·C`` (``bn_params``). Per-tensor
scales are returned by the kernels as extra outputs (``wageubn.quant.device.pow2``).

The BN arithmetic (docs/WAGEUBN.md §2; training mode, ``M`` elements per channel)::

    s1, s2 = Σx, Σx²   (float64)          mean = s1/M,  var = max(s2/M − mean², 0)   → float32
    mu_q = Q(mean, k_mu)    std = sqrt(var)    sigma_q = Q(std, k_sigma) + eps
    t = (x − mu_q) / sigma_q      x_hat = Q(t, k_xhat)      y = x_hat · gamma_q + beta_q

and its straight-through backward (``g = dL/dy``; sums in float64, then float32)::

    dbeta = Σg      dgamma = Σ g·x_hat      dt = g·gamma_q
    d_mu_q = −gamma_q·Σg / sigma_q          d_sigma_q = −gamma_q·Σ g·t / sigma_q
    d_var  = d_sigma_q / (2·std), or 0 where std = 0 (the finite limit: x − mean is 0 there)
    dx = dt / sigma_q + d_mu_q / M + (x − mean) · (2·d_var / M)

The ``int8`` mode stores ``x_hat`` as integer codes and uses them where ``paper`` uses ``t`` (and
``x_hat·sigma_q + mu_q − mean`` for ``x − mean``): what a chip that keeps x̂ would compute.
"""

from __future__ import annotations

import torch

from ..quant.device import fit_exponent, nan_guard, pow2, round_log2
from ..quant.fusion import fused
from .kernel_layout import (
    ChannelLayout,
    colsum,
    join_bytes,
    pack_mask,
    split_bytes,
    tile,
    unpack_mask,
)

__all__ = [
    "ChannelLayout",
    "bn_backward",
    "bn_backward_sums",
    "bn_forward",
    "bn_prepare",
    "bn_relu_int8_codes",
    "bn_relu_int8_forward",
    "e1_factors",
    "join_bytes",
    "pack_mask",
    "relu_backward",
    "relu_forward",
    "split_bytes",
    "unpack_mask",
]


def _bc(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1)


def _q(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    """``Q(x, k)`` inside a kernel (``bits`` is a Python int, or None for float)."""
    if bits is None:
        return x
    return torch.round(x * (2.0 ** (bits - 1))) * (2.0 ** (1 - bits))


# -- BatchNorm -----------------------------------------------------------------------------------


@fused(recompute=True)
def bn_prepare(
    x3: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    tracked: torch.Tensor | None,
    count: torch.Tensor,
    batch_stats: bool,
    update: bool,
    momentum: float | None,
    eps: float,
    k_mean: int | None,
    k_std: int | None,
    k_xhat: int | None,
    k_gamma: int | None,
    k_beta: int | None,
    k_a: int | None,
    k: int,
    r: int,
) -> tuple[torch.Tensor, ...]:
    """Everything per channel a BN step needs, in one kernel (a pass over ``x`` when it needs
    batch statistics or, for the int8 A of a fused ReLU, the channels' extremes).

    Returns per channel ``(mean, std, mu_q, sigma_q, gamma_q, beta_q)`` (γ = 1, β = 0 when
    absent), then ``mu_q, sigma_q, gamma_q, beta_q, mean`` tiled for the widened view, then with
    ``k_a`` the int8 A of the fused ReLU: exponent ``e``, NaN guard, factors ``2^−e`` (two) and
    ``2^e`` (two). ``max relu(y)`` needs no extra pass: ``x ↦ y`` is a chain of monotone,
    correctly rounded steps, increasing where ``gamma_q >= 0`` and decreasing elsewhere, so each
    channel's largest ``y`` is ``y(max x)`` or ``y(min x)``, exactly.

    With ``update``, the running statistics are updated in place as ``torch.nn.BatchNorm`` does
    (unbiased variance; exponential average, or cumulative with ``momentum=None``) — and left as
    they were, without a host read, when the batch statistics are not finite."""
    if batch_stats or k_a is not None:
        xd = x3.to(torch.float64)
        s1, s2 = colsum(xd, r), colsum(xd * xd, r)
        lo, hi = x3.amin((0, 2)), x3.amax((0, 2))
        if k > 1:
            s1, s2 = s1.view(k, -1).sum(0), s2.view(k, -1).sum(0)
            lo, hi = lo.view(k, -1).amin(0), hi.view(k, -1).amax(0)
    if batch_stats:
        mean64 = s1 / count
        mean = mean64.to(x3.dtype)
        var = torch.clamp(s2 / count - mean64 * mean64, min=0.0).to(x3.dtype)
        if update:
            ok = torch.isfinite(mean).all() & torch.isfinite(var).all()
            tracked_new = tracked + ok.to(tracked.dtype)
            if momentum is None:
                factor = 1.0 / torch.clamp(tracked_new, min=1).to(mean.dtype)
            else:
                factor = torch.full_like(mean[:1], momentum)
            unbiased = var * (count / torch.clamp(count - 1, min=1)).to(var.dtype)
            new_mean = running_mean * (1 - factor) + mean * factor
            new_var = running_var * (1 - factor) + unbiased * factor
            running_mean.copy_(torch.where(ok, new_mean, running_mean))
            running_var.copy_(torch.where(ok, new_var, running_var))
            tracked.copy_(tracked_new)
    else:
        mean, var = running_mean.clone(), running_var.clone()
    std = torch.sqrt(var)
    mu_q = _q(mean, k_mean)
    sigma_q = _q(std, k_std) + eps
    gamma_q = torch.ones_like(mean) if gamma is None else _q(gamma, k_gamma)
    beta_q = torch.zeros_like(mean) if beta is None else _q(beta, k_beta)
    out = (mean, std, mu_q, sigma_q, gamma_q, beta_q)
    out += tuple(tile(v, k) for v in (mu_q, sigma_q, gamma_q, beta_q, mean))
    if k_a is None:
        return out
    top = torch.where(gamma_q >= 0, hi, lo)
    y_top = _q((top - mu_q) / sigma_q, k_xhat) * gamma_q + beta_q
    amax = torch.relu(y_top).amax()
    e = fit_exponent(amax, k_a)
    return (*out, e, nan_guard(amax), *pow2(-e, mean.dtype), *pow2(e, mean.dtype))


def _xhat(x3, mu_q, sigma_q, k_xhat):
    """``(t, x_hat)`` of the BN input (paper formulas)."""
    t = (x3 - _bc(mu_q)) / _bc(sigma_q)
    return t, _q(t, k_xhat)


def _saved_xhat(src, p1, p2, mu_q, sigma_q, k_xhat, xhat_exp, dtype):
    """``(t, x_hat)`` from what the forward kept: the input ``src`` (``xhat_exp`` None), or the x̂
    codes as byte planes ``(src, p1[, p2])``."""
    if xhat_exp is None:
        return _xhat(src, mu_q, sigma_q, k_xhat)
    parts = (src, p1) if p2 is None else (src, p1, p2)
    xhat = join_bytes(parts, dtype) * (2.0**xhat_exp)
    return xhat, xhat


@fused(recompute=True)
def bn_forward(
    x3: torch.Tensor,
    mu_q: torch.Tensor,
    sigma_q: torch.Tensor,
    gamma_q: torch.Tensor,
    beta_q: torch.Tensor,
    k_xhat: int | None,
    k_a: int | None,
    relu: bool,
    xhat_planes: int | None,
) -> tuple[torch.Tensor, ...]:
    """One pass: the BN output ``y = Q(t, k_x̂)·gamma_q + beta_q`` — or with ``relu`` the paper's
    ``A = Q(relu(y), k_A)`` — and, with ``xhat_planes``, the x̂ codes ``round(t·2^(k_x̂−1))`` as
    that many byte planes."""
    t, xhat = _xhat(x3, mu_q, sigma_q, k_xhat)
    y = xhat * _bc(gamma_q) + _bc(beta_q)
    out = _q(torch.relu(y), k_a) if relu else y
    if xhat_planes is None:
        return (out,)
    return (out, *split_bytes(torch.round(t * (2.0 ** (k_xhat - 1))), xhat_planes))


@fused(recompute=True)
def bn_relu_int8_forward(
    x3: torch.Tensor,
    mu_q: torch.Tensor,
    sigma_q: torch.Tensor,
    gamma_q: torch.Tensor,
    beta_q: torch.Tensor,
    down0: torch.Tensor,
    down1: torch.Tensor,
    up0: torch.Tensor,
    up1: torch.Tensor,
    guard: torch.Tensor,
    k_xhat: int | None,
    xhat_planes: int | None,
) -> tuple[torch.Tensor, ...]:
    """``int8`` BN + ReLU + A in one pass: ``(a, a_codes[, x̂ code planes...])`` with the A
    exponent's factors ``2^−e = down0·down1``, ``2^e = up0·up1`` from ``bn_params``."""
    t, xhat = _xhat(x3, mu_q, sigma_q, k_xhat)
    a_codes = torch.round(torch.relu(xhat * _bc(gamma_q) + _bc(beta_q)) * down0 * down1)
    out = (a_codes * up0 * up1 + guard, a_codes.to(torch.int8))
    if xhat_planes is None:
        return out
    return (*out, *split_bytes(torch.round(t * (2.0 ** (k_xhat - 1))), xhat_planes))


@fused(recompute=True)
def bn_relu_int8_codes(
    p0: torch.Tensor,
    p1: torch.Tensor,
    p2: torch.Tensor | None,
    gamma_q: torch.Tensor,
    beta_q: torch.Tensor,
    down0: torch.Tensor,
    down1: torch.Tensor,
    xhat_exp: int,
) -> torch.Tensor:
    """The int8 A codes of ``bn_relu_int8_forward`` rebuilt from the x̂ code planes it kept: the
    same x̂, hence the same ``y`` and the same codes (for the next conv's weight gradient)."""
    xhat = join_bytes((p0, p1) if p2 is None else (p0, p1, p2), gamma_q.dtype) * (2.0**xhat_exp)
    y = torch.relu(xhat * _bc(gamma_q) + _bc(beta_q))
    return torch.round(y * down0 * down1).to(torch.int8)


def e1_factors(amax, r, bits: int, dtype) -> tuple[torch.Tensor, ...]:
    """E1 = SQ scale factors ``2^(k−1−r)`` (two), ``2^(r−k+1)`` (two) and the NaN guard."""
    return (*pow2((bits - 1) - r, dtype), *pow2(r - (bits - 1), dtype), nan_guard(amax))


def _e1(g, f, limit):
    codes = torch.clamp(torch.round(g * f[0] * f[1]), -limit, limit)
    return codes * f[2] * f[3] + f[4]


def _e1_mask(g3, xhat, gamma_q, beta_q, relu, e1_bits, e1_limit, f):
    """``dL/dy`` from ``dL/dA``: E1 ``SQ(g, k_E1)`` (scale factors ``f``), then the ReLU mask
    ``y > 0`` recomputed from x̂. Without ``relu``, ``g`` itself."""
    if not relu:
        return g3
    if e1_bits is not None:
        g3 = _e1(g3, f, e1_limit)
    y = xhat * _bc(gamma_q) + _bc(beta_q)
    return torch.where(y > 0, g3, 0.0 * g3)


@fused(recompute=True)
def bn_backward_sums(
    g3: torch.Tensor,
    src3: torch.Tensor,
    p1: torch.Tensor | None,
    p2: torch.Tensor | None,
    mu_t: torch.Tensor,
    sigma_t: torch.Tensor,
    gamma_t: torch.Tensor,
    beta_t: torch.Tensor,
    gamma_q: torch.Tensor,
    sigma_q: torch.Tensor,
    std: torch.Tensor,
    count: torch.Tensor,
    k_xhat: int | None,
    xhat_exp: int | None,
    relu: bool,
    e1_bits: int | None,
    e1_limit: float,
    k: int,
    r: int,
) -> tuple[torch.Tensor, ...]:
    """The backward's reduction pass: per channel ``dgamma = Σdy·x̂``, ``dbeta = Σdy`` (float64
    sums, then float32) and the tiled coefficients ``k0 = d_mu_q / M``, ``k1 = 2·d_var / M`` of
    ``dx`` (``d_mu_q = −gamma_q·Σdy/sigma_q``, ``d_var = −gamma_q·Σdy·t/(sigma_q·2·std)``, 0
    where ``std = 0``); then E1's five factors (``e1_factors``) for ``bn_backward``."""
    if relu and e1_bits is not None:
        amax = g3.abs().amax()
        f = e1_factors(amax, round_log2(amax), e1_bits, g3.dtype)
    else:
        f = (torch.zeros((), dtype=g3.dtype, device=g3.device),) * 5
    t, xhat = _saved_xhat(src3, p1, p2, mu_t, sigma_t, k_xhat, xhat_exp, g3.dtype)
    dy = _e1_mask(g3, xhat, gamma_t, beta_t, relu, e1_bits, e1_limit, f).to(torch.float64)
    s0, s1, s2 = colsum(dy, r), colsum(dy * xhat, r), colsum(dy * t, r)
    if k > 1:
        s0, s1, s2 = (v.view(k, -1).sum(0) for v in (s0, s1, s2))
    gq, sq, sd = gamma_q.double(), sigma_q.double(), std.double()
    d_mu = -(gq * s0) / sq
    d_var = torch.where(sd > 0, (-(gq * s2) / sq) / (2.0 * sd), 0.0)
    k0 = (d_mu / count).to(g3.dtype)
    k1 = (2.0 * d_var / count).to(g3.dtype)
    return s1.to(g3.dtype), s0.to(g3.dtype), tile(k0, k), tile(k1, k), *f


@fused(recompute=True)
def bn_backward(
    g3: torch.Tensor,
    src3: torch.Tensor,
    p1: torch.Tensor | None,
    p2: torch.Tensor | None,
    mean: torch.Tensor,
    mu_q: torch.Tensor,
    sigma_q: torch.Tensor,
    gamma_q: torch.Tensor,
    beta_q: torch.Tensor,
    k0: torch.Tensor | None,
    k1: torch.Tensor | None,
    f0: torch.Tensor,
    f1: torch.Tensor,
    f2: torch.Tensor,
    f3: torch.Tensor,
    f4: torch.Tensor,
    k_xhat: int | None,
    xhat_exp: int | None,
    relu: bool,
    e1_bits: int | None,
    e1_limit: float,
) -> torch.Tensor:
    """``dL/dx`` (the module docstring's formula) with the coefficients of ``bn_coefficients``
    (``k0``/``k1`` None: running statistics, no batch terms). Vectors are tiled."""
    t, xhat = _saved_xhat(src3, p1, p2, mu_q, sigma_q, k_xhat, xhat_exp, g3.dtype)
    dy = _e1_mask(g3, xhat, gamma_q, beta_q, relu, e1_bits, e1_limit, (f0, f1, f2, f3, f4))
    dx = (dy * _bc(gamma_q)) / _bc(sigma_q)
    if k0 is None:
        return dx
    if xhat_exp is None:
        centered = src3 - _bc(mean)
    else:
        centered = xhat * _bc(sigma_q) + _bc(mu_q - mean)
    return dx + _bc(k0) + centered * _bc(k1)


# -- the activation point (ReLU) -----------------------------------------------------------------


@fused
def relu_forward(x: torch.Tensor, k_a: int | None, int8: bool) -> tuple[torch.Tensor, ...]:
    """``A`` of a flat ReLU input and its packed mask ``x > 0`` (``x`` padded to a multiple of 8
    by the caller). Paper: ``Q(relu(x), k_A)``; ``int8``: the fit grid, plus its int8 codes,
    exponent and NaN guard."""
    r = torch.relu(x)
    packed = pack_mask(x > 0)
    if k_a is None:
        return r, packed
    if not int8:
        return _q(r, k_a), packed
    amax = r.amax()
    e = fit_exponent(amax, k_a)
    guard = nan_guard(amax)
    down, up = pow2(-e, x.dtype), pow2(e, x.dtype)
    codes = torch.round(r * down[0] * down[1])
    a = codes * up[0] * up[1] + guard
    return a, packed, codes.to(torch.int8), e, guard, *down, *up


@fused
def relu_backward(
    g: torch.Tensor, packed: torch.Tensor, e1_bits: int | None, e1_limit: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dL/dx = SQ(g, k_E1)·mask`` (E1, then the ReLU mask) and the E1 exponent ``r``."""
    mask = unpack_mask(packed, g.shape[0])
    if e1_bits is None:
        return torch.where(mask, g, 0.0), torch.zeros((), dtype=torch.int64, device=g.device)
    amax = g.abs().amax()
    r = round_log2(amax)
    f = e1_factors(amax, r, e1_bits, g.dtype)
    e1 = _e1(g, f, e1_limit)
    return torch.where(mask, e1, 0.0 * e1), r, *f
