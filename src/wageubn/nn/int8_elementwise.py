"""BatchNorm and ReLU of the ``int8`` mode as single autograd functions that save integers.

The forward values are exactly those of the ``paper`` formulas (docs/WAGEUBN.md §2, with the
``int8`` A and E1 of §6). What differs is what is kept for backward and therefore the backward:

* BN keeps ``x̂_q = Q((x − μ_q)/σ_q, k_x̂)`` as int16 codes (2 bytes an element; the unbounded
  8-bit fixed point of §8.3 needs more than 8 bits) plus per-channel statistics, and its
  straight-through backward uses ``x̂_q`` where the float autograd of the ``paper`` mode uses the
  unrounded ``(x − μ_q)/σ_q`` — what an integer training chip that stores 8-bit x̂ would compute;
* ReLU keeps its mask ``y > 0`` packed 8 to a byte, and applies E1 (``SQ`` with codes ±127) then
  the mask.

With the conv's int8 input codes, a pre-activation unit keeps about 3.1 bytes per element for
backward instead of float32's 8 (BN input + ReLU output).

BN backward (``g = dL/dy``, sums over N, H, W per channel, ``M`` elements each)::

    dγ = Σ g·x̂_q        dβ = Σ g        g_t = g·γ_q
    dL/dμ = −Σ g_t / σ_q                 dL/dσ = −Σ g_t·x̂_q / σ_q        dL/dvar = dL/dσ / (2·sqrt(var))
    dL/dx = g_t/σ_q + dL/dμ / M + dL/dvar · 2·(x̂_q·σ_q + μ_q − μ) / M     (training)
    dL/dx = g_t/σ_q                                                         (eval: fixed statistics)
"""

from __future__ import annotations

import torch

from ..config import WAGEUBNConfig
from ..quant import direct_quantize, mul_pow2, shift_quantize
from ..quant.functions import fit_exponent_of
from ..quant.rounding import finite_minmax

__all__ = ["int8_batch_norm", "int8_relu", "pack_bits", "unpack_bits"]

_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8, 8 elements a byte (padded with zeros)."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8).to(torch.uint8) * _WEIGHTS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    bits = (packed[:, None] & _WEIGHTS.to(packed.device)) != 0
    return bits.reshape(-1)[: shape.numel()].reshape(shape)


def _q(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    return x if bits is None else direct_quantize(x, bits)


class _Int8BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta, mean, var, batch_stats, config, obs):  # type: ignore[override]
        cfg: WAGEUBNConfig = config
        mean_q = _q(mean, cfg.bn_mean)
        std = torch.sqrt(var)
        std_q = _q(std, cfg.bn_std) + cfg.bn_eps
        t = (x - mean_q[:, None, None]) / std_q[:, None, None]
        if cfg.bn_xhat is not None:  # Q(t, k) through its codes, kept for backward
            codes = mul_pow2(t, cfg.bn_xhat - 1).round_()
            xhat = mul_pow2(codes, 1 - cfg.bn_xhat)
        else:
            xhat = t
        gamma_q = _q(gamma, cfg.bn_gamma) if gamma is not None else None
        beta_q = _q(beta, cfg.bn_beta) if beta is not None else None
        if obs is not None:
            for role, before, after in (("bn_mean", mean, mean_q), ("bn_std", std, std_q - cfg.bn_eps),
                                        ("bn_xhat", t, xhat), ("bn_gamma", gamma, gamma_q),
                                        ("bn_beta", beta, beta_q)):  # fmt: skip
                bits = getattr(cfg, role)
                if before is not None and bits is not None:
                    obs(role, before.detach(), after.detach(), "Q", bits)
        y = xhat * gamma_q[:, None, None] if gamma_q is not None else xhat.clone()
        if beta_q is not None:
            y = y + beta_q[:, None, None]
        if cfg.bn_xhat is not None:
            lo, hi = torch.aminmax(codes)
            if max(float(hi), -float(lo)) < 2**15:
                ctx.xhat_exp = 1 - cfg.bn_xhat
                xhat_saved = codes.to(torch.int16)  # 2 bytes an element
            else:  # x̂ beyond ±256: keep float (exact), rare
                ctx.xhat_exp = None
                xhat_saved = xhat
        else:
            ctx.xhat_exp = None
            xhat_saved = xhat
        ctx.save_for_backward(xhat_saved, gamma_q, mean_q - mean, std, std_q)
        ctx.batch_stats = batch_stats
        ctx.has = (gamma is not None, beta is not None)
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        xhat_saved, gamma_q, shift, std, std_q = ctx.saved_tensors
        if ctx.xhat_exp is None:
            xhat = xhat_saved
        else:
            xhat = xhat_saved.to(g.dtype) * 2.0**ctx.xhat_exp
        dims = (0, 2, 3)
        dgamma = (g * xhat).sum(dims) if ctx.has[0] and ctx.needs_input_grad[1] else None
        dbeta = g.sum(dims) if ctx.has[1] and ctx.needs_input_grad[2] else None
        dx = None
        if ctx.needs_input_grad[0]:
            gt = g * gamma_q[:, None, None] if gamma_q is not None else g
            inv = (1.0 / std_q)[:, None, None]
            dx = gt * inv
            if ctx.batch_stats:
                m = g.numel() // g.shape[1]
                sum_gt = gt.sum(dims)
                sum_gt_x = (gt * xhat).sum(dims)
                d_mean = -sum_gt / std_q
                d_var = torch.where(std > 0, (-sum_gt_x / std_q) / (2 * std), torch.zeros_like(std))
                centered = xhat * std_q[:, None, None] + shift[:, None, None]  # ≈ x − μ
                dx = dx + (d_mean / m)[:, None, None] + centered * (2 * d_var / m)[:, None, None]
        return dx, dgamma, dbeta, None, None, None, None, None


def int8_batch_norm(module, x: torch.Tensor, obs) -> torch.Tensor:
    """``QuantBatchNorm2d.forward`` in ``int8`` arithmetic (statistics as in the paper mode)."""
    batch_stats = module.training or module.running_mean is None
    if batch_stats:
        mean = x.detach().mean((0, 2, 3))
        var = x.detach().var((0, 2, 3), unbiased=False)
        if module.training and module.track_running_stats and module.running_mean is not None:
            module._update_running_stats(mean, var, x.numel() // x.shape[1])
    else:
        mean, var = module.running_mean, module.running_var
    return _Int8BatchNorm.apply(
        x, module.weight, module.bias, mean, var, batch_stats, module.config, obs
    )


class _Int8ReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, config, obs):  # type: ignore[override]
        mask = x > 0
        r = torch.relu(x)
        if config.activation is not None:
            bits = config.activation
            _, hi = finite_minmax(r, "int8 activation")  # r >= 0: max|r| = hi
            e = fit_exponent_of(hi, bits)
            codes = mul_pow2(r, -e).round_()  # 0 .. 2^(k−1) − 1
            a = mul_pow2(codes, e)  # = fit_quantize(r, k)
            # the next int8 conv reuses these codes instead of re-deriving them (same bits; the
            # tensor's version guards against an in-place change in between)
            a._wageubn_codes = (codes.to(torch.int8), e, bits, a._version)
            if obs is not None:
                obs("A", r, a, "fit", bits)
        else:
            a = r
        ctx.save_for_backward(pack_bits(mask))
        ctx.shape = x.shape
        ctx.config = config
        ctx.obs = obs
        return a

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (packed,) = ctx.saved_tensors
        cfg = ctx.config
        if cfg.error1 is not None:
            e1 = shift_quantize(g, cfg.error1, narrow_range=True)
            if ctx.obs is not None:
                ctx.obs("E1", g.detach(), e1, "SQ", cfg.error1, narrow_range=True)
        else:
            e1 = g
        return e1 * unpack_bits(packed, ctx.shape), None, None


def int8_relu(module, x: torch.Tensor, obs) -> torch.Tensor:
    """``QuantReLU.forward`` in ``int8`` arithmetic: A = fit_quantize, E1 = SQ with codes ±127."""
    return _Int8ReLU.apply(x, module.config, obs)
