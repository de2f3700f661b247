"""Fused kernels of the quantized BatchNorm and activation: one reduction and one elementwise pass.

Each function is one ``@fused`` kernel (``wageubn.quant.fusion``): compiled by default, eager
code otherwise, same values either way. Shapes: BN kernels take the input as a 3-D view
``(A, C, B)`` with the channels in the middle (``ChannelLayout``) and per-channel vectors of
length ``C``. Activation kernels take 1-D views (``wageubn.quant.device.flat``).

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

from ..quant.device import fit_exponent, ldexp, nan_guard, round_log2
from ..quant.fusion import fused

__all__ = [
    "bn_backward",
    "bn_backward_sums",
    "bn_forward",
    "bn_params",
    "bn_relu_int8_forward",
    "bn_running_update",
    "bn_stats",
    "ChannelLayout",
    "pack_mask",
    "relu_backward",
    "relu_forward",
    "unpack_mask",
]


class ChannelLayout:
    """How a BN input ``(N, C, *spatial)`` is seen by the kernels: a 3-D view ``(A, C, B)`` with the
    channels in the middle — ``(N, C, H·W)`` for contiguous input, ``(N·H·W, C, 1)`` for
    channels_last, ``(N, C, 1)`` for 2-D input — and back. Other layouts are copied contiguous."""

    def __init__(self, x: torch.Tensor) -> None:
        self.shape = x.shape
        self.channels_last = (
            x.dim() == 4
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        )

    def view3(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (shape ``self.shape``) as the kernels' 3-D view, copied into the layout if needed."""
        n, c = self.shape[0], self.shape[1]
        if self.channels_last:
            return (
                t.contiguous(memory_format=torch.channels_last)
                .permute(0, 2, 3, 1)
                .reshape(-1, c, 1)
                .detach()
            )
        return t.contiguous().view(n, c, -1).detach()

    def back(self, y3: torch.Tensor) -> torch.Tensor:
        """A kernel's 3-D output as a tensor of ``self.shape`` in this layout (detached from the
        3-D view, so autograd treats a Function's output as its own tensor, not a view)."""
        if self.channels_last:
            n, c, h, w = self.shape
            return y3.view(n, h, w, c).permute(0, 3, 1, 2).detach()
        return y3.view(self.shape).detach()


def _bc(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1)


def _q(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    """``Q(x, k)`` inside a kernel (``bits`` is a Python int, or None for float)."""
    if bits is None:
        return x
    return torch.round(x * (2.0 ** (bits - 1))) * (2.0 ** (1 - bits))


# -- BatchNorm -----------------------------------------------------------------------------------


@fused
def bn_stats(x3: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per channel of ``(A, C, B)``: float32 mean and biased variance from float64 sums, and the
    minimum and maximum (one pass)."""
    xd = x3.to(torch.float64)
    m = x3.shape[0] * x3.shape[2]
    mean = xd.sum((0, 2)) / m
    var = torch.clamp((xd * xd).sum((0, 2)) / m - mean * mean, min=0.0)
    return mean.to(x3.dtype), var.to(x3.dtype), x3.amin((0, 2)), x3.amax((0, 2))


@fused
def bn_params(
    mean: torch.Tensor,
    var: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    eps: float,
    k_mean: int | None,
    k_std: int | None,
    k_gamma: int | None,
    k_beta: int | None,
) -> tuple[torch.Tensor, ...]:
    """Per-channel ``(mu_q, std, sigma_q, gamma_q, beta_q)`` (γ = 1, β = 0 when absent)."""
    std = torch.sqrt(var)
    mu_q = _q(mean, k_mean)
    sigma_q = _q(std, k_std) + eps
    gamma_q = torch.ones_like(mean) if gamma is None else _q(gamma, k_gamma)
    beta_q = torch.zeros_like(mean) if beta is None else _q(beta, k_beta)
    return mu_q, std, sigma_q, gamma_q, beta_q


@fused
def bn_running_update(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    tracked: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    n: int,
    momentum: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.nn.BatchNorm``'s update of the running statistics (unbiased variance; exponential
    average, or cumulative with ``momentum=None``) — skipped, without a host read, when the batch
    statistics are not finite, so a bad batch leaves them as they were."""
    ok = torch.isfinite(mean).all() & torch.isfinite(var).all()
    tracked_new = tracked + ok.to(tracked.dtype)
    if momentum is None:
        factor = 1.0 / torch.clamp(tracked_new, min=1).to(mean.dtype)
    else:
        factor = torch.full_like(mean[:1], momentum)
    unbiased = var * (n / (n - 1)) if n > 1 else var
    new_mean = running_mean * (1 - factor) + mean * factor
    new_var = running_var * (1 - factor) + unbiased * factor
    return (
        torch.where(ok, new_mean, running_mean),
        torch.where(ok, new_var, running_var),
        tracked_new,
    )


def _xhat(x3, mu_q, sigma_q, k_xhat):
    """``(t, x_hat)`` of the BN input (paper formulas)."""
    t = (x3 - _bc(mu_q)) / _bc(sigma_q)
    return t, _q(t, k_xhat)


def _saved_xhat(src3, mu_q, sigma_q, k_xhat, xhat_exp, dtype):
    """``(t, x_hat)`` from what the forward kept: the input (``xhat_exp`` None) or x̂ codes."""
    if xhat_exp is None:
        return _xhat(src3, mu_q, sigma_q, k_xhat)
    xhat = src3.to(dtype) * (2.0**xhat_exp)
    return xhat, xhat


@fused
def bn_forward(
    x3: torch.Tensor,
    mu_q: torch.Tensor,
    sigma_q: torch.Tensor,
    gamma_q: torch.Tensor,
    beta_q: torch.Tensor,
    k_xhat: int | None,
    k_a: int | None,
    relu: bool,
    xhat_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, ...]:
    """One pass: the BN output ``y = Q(t, k_x̂)·gamma_q + beta_q`` — or with ``relu`` the paper's
    ``A = Q(relu(y), k_A)`` — and, with ``xhat_dtype``, the x̂ codes ``round(t·2^(k_x̂−1))``."""
    t, xhat = _xhat(x3, mu_q, sigma_q, k_xhat)
    y = xhat * _bc(gamma_q) + _bc(beta_q)
    out = _q(torch.relu(y), k_a) if relu else y
    if xhat_dtype is None:
        return (out,)
    return out, torch.round(t * (2.0 ** (k_xhat - 1))).to(xhat_dtype)


@fused
def bn_relu_int8_forward(
    x3: torch.Tensor,
    mu_q: torch.Tensor,
    sigma_q: torch.Tensor,
    gamma_q: torch.Tensor,
    beta_q: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    k_xhat: int | None,
    k_a: int,
    xhat_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, ...]:
    """``int8`` BN + ReLU + A in one pass: ``(a, a_codes, e, guard[, xhat_codes])``.

    ``max relu(y)`` comes from the per-channel extremes ``lo``/``hi`` of ``x``: ``x ↦ y`` is a
    chain of monotone, correctly rounded steps, increasing where ``gamma_q >= 0`` and decreasing
    elsewhere, so each channel's largest ``y`` is ``y(hi)`` or ``y(lo)`` — exactly, no pass."""
    top = torch.where(gamma_q >= 0, hi, lo)
    y_top = _q((top - mu_q) / sigma_q, k_xhat) * gamma_q + beta_q
    amax = torch.relu(y_top).amax()
    e = fit_exponent(amax, k_a)
    guard = nan_guard(amax)
    t, xhat = _xhat(x3, mu_q, sigma_q, k_xhat)
    a_codes = torch.round(ldexp(torch.relu(xhat * _bc(gamma_q) + _bc(beta_q)), -e))
    a = ldexp(a_codes, e) + guard
    out = (a, a_codes.to(torch.int8), e, guard)
    if xhat_dtype is None:
        return out
    return (*out, torch.round(t * (2.0 ** (k_xhat - 1))).to(xhat_dtype))


def _e1_mask(g3, xhat, gamma_q, beta_q, relu, e1_bits, e1_limit, r, guard):
    """``dL/dy`` from ``dL/dA``: E1 ``SQ(g, k_E1)`` (exponent ``r`` given), then the ReLU mask
    ``y > 0`` recomputed from x̂. Without ``relu``, ``g`` itself."""
    if not relu:
        return g3
    if e1_bits is not None:
        codes = torch.clamp(torch.round(ldexp(g3, (e1_bits - 1) - r)), -e1_limit, e1_limit)
        g3 = ldexp(codes, r - (e1_bits - 1)) + guard
    y = xhat * _bc(gamma_q) + _bc(beta_q)
    return torch.where(y > 0, g3, 0.0 * g3)


@fused
def bn_backward_sums(
    g3: torch.Tensor,
    src3: torch.Tensor,
    mu_q: torch.Tensor,
    sigma_q: torch.Tensor,
    gamma_q: torch.Tensor,
    beta_q: torch.Tensor,
    k_xhat: int | None,
    xhat_exp: int | None,
    relu: bool,
    e1_bits: int | None,
    e1_limit: float,
) -> tuple[torch.Tensor, ...]:
    """Per-channel float64 ``(Σdy, Σdy·x̂, Σdy·t)``, the E1 exponent ``r`` and NaN guard."""
    amax = g3.abs().amax()
    r = round_log2(amax)
    guard = nan_guard(amax)
    t, xhat = _saved_xhat(src3, mu_q, sigma_q, k_xhat, xhat_exp, g3.dtype)
    dy = _e1_mask(g3, xhat, gamma_q, beta_q, relu, e1_bits, e1_limit, r, guard).to(torch.float64)
    return dy.sum((0, 2)), (dy * xhat).sum((0, 2)), (dy * t).sum((0, 2)), r, guard


@fused
def bn_backward(
    g3: torch.Tensor,
    src3: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    mu_q: torch.Tensor,
    sigma_q: torch.Tensor,
    gamma_q: torch.Tensor,
    beta_q: torch.Tensor,
    s0: torch.Tensor,
    s2: torch.Tensor,
    r: torch.Tensor,
    guard: torch.Tensor,
    k_xhat: int | None,
    xhat_exp: int | None,
    relu: bool,
    e1_bits: int | None,
    e1_limit: float,
    batch_stats: bool,
) -> torch.Tensor:
    """``dL/dx`` (the module docstring's formula) from the sums of ``bn_backward_sums``."""
    t, xhat = _saved_xhat(src3, mu_q, sigma_q, k_xhat, xhat_exp, g3.dtype)
    dy = _e1_mask(g3, xhat, gamma_q, beta_q, relu, e1_bits, e1_limit, r, guard)
    dx = (dy * _bc(gamma_q)) / _bc(sigma_q)
    if not batch_stats:
        return dx
    if xhat_exp is None:
        centered = src3 - _bc(mean)
    else:
        centered = xhat * _bc(sigma_q) + _bc(mu_q - mean)
    m = g3.shape[0] * g3.shape[2]
    gq, sq, sd = gamma_q.double(), sigma_q.double(), std.double()
    d_mu = -(gq * s0) / sq
    d_var = torch.where(sd > 0, (-(gq * s2) / sq) / (2.0 * sd), 0.0)
    k0 = (d_mu / m).to(g3.dtype)
    k1 = (2.0 * d_var / m).to(g3.dtype)
    return dx + _bc(k0) + centered * _bc(k1)


# -- the activation point (ReLU) -----------------------------------------------------------------

_SHIFTS = (0, 1, 2, 3, 4, 5, 6, 7)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A 1-D bool tensor whose length is a multiple of 8, as uint8 (8 elements a byte)."""
    bits = mask.view(-1, 8).to(torch.uint8)
    shifts = torch.tensor(_SHIFTS, dtype=torch.uint8, device=mask.device)
    return (bits << shifts).sum(1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` elements of a packed mask as bool."""
    shifts = torch.tensor(_SHIFTS, dtype=torch.uint8, device=packed.device)
    return ((packed.view(-1, 1) >> shifts) & 1).view(-1)[:n].to(torch.bool)


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
    codes = torch.round(ldexp(r, -e))
    return ldexp(codes, e) + guard, packed, codes.to(torch.int8), e, guard


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
    codes = torch.clamp(torch.round(ldexp(g, (e1_bits - 1) - r)), -e1_limit, e1_limit)
    e1 = ldexp(codes, r - (e1_bits - 1)) + nan_guard(amax)
    return torch.where(mask, e1, 0.0 * e1), r
