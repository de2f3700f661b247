"""Slow, obviously correct oracles written from the formulas of docs/WAGEUBN.md.

Everything here works element by element on exact rationals (``fractions.Fraction``): no float
rounding can hide between the formula and the result. Python's ``round`` on a ``Fraction`` rounds
half to even, as the contract asks. Results are returned as float64 tensors (every value here is
exactly representable) for ``assert_close(..., rtol=0, atol=0)`` against the library.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

F = Fraction


def _values(x: torch.Tensor) -> list[Fraction]:
    return [F(v) for v in x.detach().double().flatten().tolist()]


def _tensor(values: list[Fraction], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float64).reshape(like.shape)


def q(v: Fraction, k: int) -> Fraction:
    """Q(v, k) = round(v · 2^(k−1)) / 2^(k−1), ties to even."""
    n = F(2) ** (k - 1)
    return F(round(v * n)) / n


def clip(v: Fraction, lo: Fraction, hi: Fraction) -> Fraction:
    return min(max(v, lo), hi)


def r_exponent(values: list[Fraction]) -> int | None:
    """round(log2(max|v|)): the r with 2^(2r−1) <= max² < 2^(2r+1); None if all zero."""
    a = max(abs(v) for v in values)
    if a == 0:
        return None
    r = math.floor(math.log2(float(a)))  # an estimate; the loops below make it exact
    while a * a >= F(2) ** (2 * r + 1):
        r += 1
    while a * a < F(2) ** (2 * r - 1):
        r -= 1
    return r


def direct(x: torch.Tensor, k: int) -> torch.Tensor:
    return _tensor([q(v, k) for v in _values(x)], x)


def clipped_direct(x: torch.Tensor, k: int) -> torch.Tensor:
    lim = 1 - F(2) ** (1 - k)
    return _tensor([clip(q(v, k), -lim, lim) for v in _values(x)], x)


def pow2_scale(x: torch.Tensor) -> float:
    r = r_exponent(_values(x))
    return 0.0 if r is None else float(F(2) ** r)


def shift(x: torch.Tensor, k: int, narrow: bool = False) -> torch.Tensor:
    vals = _values(x)
    r = r_exponent(vals)
    if r is None:
        return torch.zeros_like(x, dtype=torch.float64)
    R = F(2) ** r
    lim = 1 - F(2) ** (1 - k) if narrow else F(1)
    return _tensor([R * clip(q(v / R, k), -lim, lim) for v in vals], x)


def flag(x: torch.Tensor, k: int) -> torch.Tensor:
    vals = _values(x)
    r = r_exponent(vals)
    if r is None:
        return torch.zeros_like(x, dtype=torch.float64)
    s = F(2) ** r / F(2) ** (k - 1)
    out = []
    for v in vals:
        y = v / s
        sign = (y > 0) - (y < 0)
        if abs(y) < 1:
            m = clip(q(abs(y), k), F(0), F(1))
        else:
            m = clip(F(round(abs(y))), F(0), F(2 ** (k - 1) - 1))
        out.append(s * sign * m)
    return _tensor(out, x)


def constant(x: torch.Tensor, k: int, dr: int, u: torch.Tensor) -> torch.Tensor:
    """CQ with the uniform draws ``u`` given explicitly (one per element, same order)."""
    vals = _values(x)
    r = r_exponent(vals)
    if r is None:
        return torch.zeros_like(x, dtype=torch.float64)
    R = F(2) ** r
    out = []
    for v, uu in zip(vals, _values(u), strict=True):
        t = F(dr) * v / R
        fl = math.floor(t)
        n = fl + (1 if uu < t - fl else 0)
        n = clip(F(n), F(-(dr - 1)), F(dr - 1))
        out.append(n * F(2) ** (-2 * (k - 1)))
    return _tensor(out, x)


# -- a WAGEUBN training step written from the contract (§2–§3), for tests/test_paper_step.py -----
# Independent of the library: the quantizers above (exact rationals) wrapped in two tiny autograd
# functions, and the data path spelled out layer by layer with plain torch ops.


class _Fwd(torch.autograd.Function):
    """fn(x) forward, identity backward (straight-through)."""

    @staticmethod
    def forward(ctx, x, fn):
        return fn(x).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _Bwd(torch.autograd.Function):
    """identity forward, fn(dL/dy) backward."""

    @staticmethod
    def forward(ctx, x, fn):
        ctx.fn = fn
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return ctx.fn(g).to(g.dtype), None


class _BN(torch.autograd.Function):
    """Training-mode WAGEUBN BN, forward and straight-through backward written out.

    The statistics and the backward's per-channel sums are accumulated in float64 and rounded
    once to float32 (docs/WAGEUBN.md §2, "reduction order"): this pins the float arithmetic that
    the contract leaves open, so the library's fused kernels can be compared bit for bit.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, eps):
        dims = (0, 2, 3)
        m = x.numel() // x.shape[1]
        xd = x.double()
        mean64 = xd.sum(dims) / m
        mean = mean64.float()
        var = torch.clamp((xd * xd).sum(dims) / m - mean64 * mean64, min=0.0).float()
        std = torch.sqrt(var)
        mu_q = direct(mean, 16).float()
        sd_q = direct(std, 16).float() + eps
        t = (x - mu_q[:, None, None]) / sd_q[:, None, None]
        xhat = direct(t, 8).float()
        g_q, b_q = direct(gamma, 8).float(), direct(beta, 8).float()
        ctx.save_for_backward(x, mean, std, sd_q, g_q, t, xhat)
        return xhat * g_q[:, None, None] + b_q[:, None, None]

    @staticmethod
    def backward(ctx, dy):
        x, mean, std, sd_q, g_q, t, xhat = ctx.saved_tensors
        dims = (0, 2, 3)
        m = x.numel() // x.shape[1]
        d64 = dy.double()
        s0, s1, s2 = d64.sum(dims), (d64 * xhat).sum(dims), (d64 * t).sum(dims)
        gq, sq, sd = g_q.double(), sd_q.double(), std.double()
        d_mu = -(gq * s0) / sq  # through mu_q (straight through Q) and the mean
        d_var = torch.where(sd > 0, (-(gq * s2) / sq) / (2.0 * sd), 0.0)  # through sigma_q, sqrt
        k0 = (d_mu / m).float()[:, None, None]
        k1 = (2.0 * d_var / m).float()[:, None, None]
        dx = (dy * g_q[:, None, None]) / sd_q[:, None, None] + k0 + (x - mean[:, None, None]) * k1
        return dx, s1.float(), s0.float(), None


def ref_bn(x, gamma, beta, eps=2.0**-15):
    """Training-mode WAGEUBN BN: batch mean and biased variance over (N, H, W)."""
    return _BN.apply(x, gamma, beta, eps)


def ref_relu(x, e1_bits=8):
    a = _Fwd.apply(torch.relu(x), lambda t: direct(t, 8))
    return _Bwd.apply(a, lambda t: shift(t, e1_bits))


def ref_conv(a, w, stride, e2_bits=8):
    wq = _Fwd.apply(w, lambda t: clipped_direct(t, 8))
    z = torch.nn.functional.conv2d(a, wq, stride=stride, padding=1)
    return _Bwd.apply(z, lambda t: flag(t, e2_bits))


def ref_small_cnn_logits(x, p):
    """``wageubn.models.small_cnn`` in the ``paper`` preset, from the formulas. ``p``: name -> tensor."""
    F_ = torch.nn.functional
    h = F_.conv2d(x, p["stem.weight"], padding=1)  # float stem
    a = F_.max_pool2d(ref_relu(ref_bn(h, p["bn1.weight"], p["bn1.bias"])), 2)
    z = ref_conv(a, p["conv1.weight"], 1)
    a = F_.max_pool2d(ref_relu(ref_bn(z, p["bn2.weight"], p["bn2.bias"])), 2)
    z = ref_conv(a, p["conv2.weight"], 1)
    a = ref_relu(ref_bn(z, p["bn3.weight"], p["bn3.bias"]))
    a = F_.adaptive_avg_pool2d(a, 7)  # not re-quantized
    return F_.linear(a.flatten(1), p["fc.weight"], p["fc.bias"])  # float classifier


def fit(x: torch.Tensor, k: int) -> torch.Tensor:
    """A of the ``int8`` mode: ``2^e · round(x / 2^e)`` with ``e`` the smallest integer >= 1 − k
    such that ``max|x| <= (2^(k−1) − 1) · 2^e`` (codes within ±(2^(k−1) − 1), no saturation)."""
    vals = _values(x)
    a = max((abs(v) for v in vals), default=F(0))
    top = 2 ** (k - 1) - 1
    e = 1 - k
    while a > top * F(2) ** e:
        e += 1
    s = F(2) ** e
    return _tensor([s * round(v / s) for v in vals], x)


class _Norm(torch.autograd.Function):
    """The BN contract over arbitrary statistics axes ``dims`` (LayerNorm, GroupNorm,
    LayerNorm2d): ``gamma``/``beta`` already shaped to broadcast against ``x``. Sums in float64,
    rounded once to float32, as in ``_BN``."""

    @staticmethod
    def forward(ctx, x, gamma, beta, dims, eps):
        m = 1
        for d in dims:
            m *= x.shape[d]
        xd = x.double()
        mean64 = xd.sum(dims, keepdim=True) / m
        mean = mean64.float()
        var = torch.clamp((xd * xd).sum(dims, keepdim=True) / m - mean64 * mean64, min=0).float()
        std = torch.sqrt(var)
        mu_q = direct(mean, 16).float()
        sd_q = direct(std, 16).float() + eps
        t = (x - mu_q) / sd_q
        xhat = direct(t, 8).float()
        g_q, b_q = direct(gamma, 8).float(), direct(beta, 8).float()
        ctx.save_for_backward(x, mean, std, sd_q, g_q, t, xhat)
        ctx.dims, ctx.m = dims, m
        return xhat * g_q + b_q

    @staticmethod
    def backward(ctx, dy):
        x, mean, std, sd_q, g_q, t, xhat = ctx.saved_tensors
        dims, m = ctx.dims, ctx.m
        param_axes = tuple(i for i in range(x.dim()) if g_q.shape[i] == 1)
        dgamma = (dy.double() * xhat.double()).sum(param_axes, keepdim=True).float()
        dbeta = dy.double().sum(param_axes, keepdim=True).float()
        dt = dy * g_q
        s0 = dt.double().sum(dims, keepdim=True)
        s2 = (dt.double() * t.double()).sum(dims, keepdim=True)
        sq, sd = sd_q.double(), std.double()
        d_mu = -s0 / sq
        d_var = torch.where(sd > 0, (-s2 / sq) / (2.0 * sd), 0.0)
        k0 = (d_mu / m).float()
        k1 = (2.0 * d_var / m).float()
        dx = dt / sd_q + k0 + (x - mean) * k1
        return dx, dgamma, dbeta, None, None


def ref_norm(x, gamma, beta, dims, eps=2.0**-15):
    """WAGEUBN normalization with statistics over ``dims`` (kept); see ``_Norm``."""
    return _Norm.apply(x, gamma, beta, dims, eps)
