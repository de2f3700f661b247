"""Quantized batch normalization (docs/WAGEUBN.md §2, "BatchNorm forward").

Training uses the batch statistics over (N, H, W) with the biased variance; eval the running
statistics::

    mu_q    = Q(mu, k_mu)                        # 16 bits
    sigma_q = Q(sqrt(var), k_sigma) + eps        # 16 bits; the STANDARD DEVIATION is quantized,
                                                 # eps = 2^-15 added after
    x_hat   = Q((x - mu_q) / sigma_q, k_xhat)    # 8 bits
    y       = x_hat * Q(gamma, k_gamma) + Q(beta, k_beta)   # y itself is not re-quantized

Every quantizer passes the gradient straight through (μ and σ included); the backward is the
derivative of the unrounded formula, written out in ``wageubn.nn.fused`` (sums in float64, the
finite limit where a channel's variance is 0). Running statistics stay float and are updated as
``torch.nn.BatchNorm2d`` updates them (unbiased variance, the module's ``momentum``; cumulative
average when ``momentum`` is None) — except that a batch whose statistics are not finite leaves
them unchanged.

The layer is one autograd node with two fused kernels each way (statistics, normalize; sums,
gradient) and keeps for backward only its input (``paper``) or the integer x̂ codes (``int8``).
When ``quantize_`` found that this BN's output goes only to a ``QuantReLU``, the BN computes that
activation too (``fuse_relu``): BN + ReLU + A forward and E1 + mask + BN backward, still one node,
and the ReLU passes the result through.

With every BN role ``None`` the layer *is* ``torch.nn.BatchNorm2d`` (``F.batch_norm``, ε inside the
square root), bit for bit.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import WAGEUBNConfig
from ..core.observe import tap
from ..core.roles import QuantModule
from ..quant.device import const
from .activation import ActivationSpec, attach_codes, mark_activated
from .fused import (
    ChannelLayout,
    bn_backward,
    bn_backward_sums,
    bn_forward,
    bn_prepare,
    bn_relu_int8_codes,
    bn_relu_int8_forward,
)
from .layers import QuantReLU, _check_config, swap_module

__all__ = ["QuantBatchNorm2d"]


@dataclass(frozen=True)
class _Spec:
    """Everything static about one BN call (a constant for ``torch.compile``)."""

    eps: float
    k_mean: int | None
    k_std: int | None
    k_xhat: int | None
    k_gamma: int | None
    k_beta: int | None
    batch_stats: bool
    relu: bool
    act: ActivationSpec
    xhat_planes: int | None  # int8 mode: the x̂ codes kept for backward, as byte planes

    @property
    def xhat_exp(self) -> int | None:
        return None if self.xhat_planes is None else 1 - self.k_xhat  # type: ignore[operator]


def xhat_code_planes(bits: int, per_channel: int) -> int:
    """How many bytes hold every x̂ code of a batch-normalized channel of ``per_channel``
    elements: ``|x − mean| <= sqrt(M − 1)·std``, so ``|t| <= sqrt(M)`` plus the small rounding
    of the quantized mean and σ (σ_q >= σ); codes ``|n| <= 2^(k−1)·(1.01·sqrt(M) + 4)``."""
    bound = 2.0 ** (bits - 1) * (1.01 * math.sqrt(per_channel) + 4)
    planes = 2
    while bound >= 2.0 ** (8 * planes - 1) - 1:
        planes += 1
    return planes


class QuantBatchNorm2d(QuantModule, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with μ, σ, x̂, γ, β quantized as in the released code."""

    PARAM_ROLES = {"weight": "bn", "bias": "bn"}  # QSGD: Q(g, 15) gradients, no weight decay

    def __init__(self, *args, config: WAGEUBNConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = _check_config(config or WAGEUBNConfig())

    @classmethod
    def from_float(cls, mod: nn.BatchNorm2d, config: WAGEUBNConfig) -> QuantBatchNorm2d:
        """A quantized BN holding ``mod``'s parameters and running statistics (same objects)."""
        return swap_module(mod, cls, _bn_args(mod), config=config)

    def to_float(self) -> nn.BatchNorm2d:
        return swap_module(self, nn.BatchNorm2d, _bn_args(self))

    # -- BN + ReLU fusion (set by quantize_) -------------------------------------------------
    def fuse_relu(self, relu: QuantReLU | None) -> None:
        """Compute ``relu``'s activation in this BN (``relu`` then passes it through); ``None``
        undoes it. Only valid when this BN's output goes to ``relu`` and nowhere else."""
        if relu is not None and not isinstance(relu, QuantReLU):
            raise TypeError(f"fuse_relu: expected a QuantReLU, got {type(relu).__name__}")
        # kept out of the module tree (not a submodule: no duplicate in state_dict/named_modules);
        # deepcopy and pickle carry it with the model
        self.__dict__["_fused_relu"] = relu

    @property
    def fused_relu(self) -> QuantReLU | None:
        return self.__dict__.get("_fused_relu")

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if not cfg.bn_quantized:
            return super().forward(x)
        self._check_input_dim(x)
        relu = self.fused_relu
        if relu is not None and (
            torch.compiler.is_compiling()
            or (relu.config.activation is None and relu.config.error1 is None)
            or _hooked(self)
            or _hooked(relu)
        ):
            relu = None  # the ReLU runs itself (hooks see the unfused values)
        layout = ChannelLayout(x)
        count = const(float(layout.per_channel), torch.float64, x.device, "count")
        batch_stats = self.training or self.running_mean is None
        act = ActivationSpec.of(relu.config if relu is not None else cfg)
        codes = cfg.arithmetic == "int8" and batch_stats and cfg.bn_xhat is not None
        spec = _Spec(
            eps=float(cfg.bn_eps),
            k_mean=cfg.bn_mean,
            k_std=cfg.bn_std,
            k_xhat=cfg.bn_xhat,
            k_gamma=cfg.bn_gamma,
            k_beta=cfg.bn_beta,
            batch_stats=batch_stats,
            relu=relu is not None,
            act=act,
            xhat_planes=xhat_code_planes(cfg.bn_xhat, layout.per_channel) if codes else None,
        )
        update = self.training and self.track_running_stats and self.running_mean is not None
        buffers = (self.running_mean, self.running_var, self.num_batches_tracked)
        out = _BatchNorm.apply(
            x, self.weight, self.bias, buffers, update, self.momentum, count, spec, layout,
            tap(self), tap(relu),
        )  # fmt: skip
        if relu is not None:
            mark_activated(out, relu)
        return out

    def extra_repr(self) -> str:
        c = self.config
        fused = ", fused ReLU" if self.fused_relu is not None else ""
        return (
            f"{super().extra_repr()}, mu={c.bn_mean}, sigma={c.bn_std}, xhat={c.bn_xhat}, "
            f"gamma={c.bn_gamma}, beta={c.bn_beta}{fused}"
        )


class _BatchNorm(torch.autograd.Function):
    """BN (and, with ``spec.relu``, ReLU + A) forward; the straight-through backward."""

    @staticmethod
    def forward(
        ctx, x, gamma, beta, buffers, update, momentum, count, spec: _Spec, layout, obs, relu_obs
    ):  # type: ignore[override]
        x3 = layout.view3(x)
        act = spec.act
        int8_act = spec.relu and act.int8 and act.activation is not None
        running_mean, running_var, tracked = buffers
        if update and tracked is None:  # torch's BN: no counter without running statistics
            tracked = torch.zeros((), dtype=torch.long, device=x.device)
        params = bn_prepare(
            x3, None if gamma is None else gamma.detach(), None if beta is None else beta.detach(),
            running_mean, running_var, tracked, count, spec.batch_stats, update, momentum,
            spec.eps, spec.k_mean, spec.k_std, spec.k_xhat, spec.k_gamma, spec.k_beta,
            act.activation if int8_act else None, layout.k, layout.r,
        )  # fmt: skip
        tiled = params[6:10]  # mu_q, sigma_q, gamma_q, beta_q for the widened view
        if int8_act:
            e, guard, d0, d1, u0, u1 = params[11:17]
            outs = bn_relu_int8_forward(
                x3, *tiled, d0, d1, u0, u1, guard, spec.k_xhat, spec.xhat_planes
            )
            out = layout.back(outs[0])
            planes = outs[2:]
            regenerate = None
            if planes:  # the next conv keeps a way to rebuild its A codes, not the codes
                regenerate = functools.partial(
                    _rebuild_codes, layout, planes, tiled[2], tiled[3], d0, d1, spec.xhat_exp
                )
            attach_codes(out, layout.back(outs[1]), e, guard, act.activation, regenerate)
        else:
            outs = bn_forward(x3, *tiled, spec.k_xhat, act.activation, spec.relu, spec.xhat_planes)
            out = layout.back(outs[0])
            planes = outs[1:]
        if obs is not None or relu_obs is not None:
            _observe_forward(obs, relu_obs, x3, gamma, beta, params, spec, out, layout)
        kept = (*planes, None, None)[:3] if planes else (x3, None, None)  # planes or the input
        # per channel: std, sigma_q, gamma_q; tiled: mu_q, sigma_q, gamma_q, beta_q, mean
        ctx.save_for_backward(*kept, params[1], params[3], params[4], *params[6:11], count)
        ctx.spec, ctx.layout, ctx.relu_obs = spec, layout, relu_obs
        ctx.has = (gamma is not None, beta is not None)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        src3, p1, p2, std, sigma_q, gamma_q, *tiled, mean_t, count = ctx.saved_tensors
        spec, act, layout = ctx.spec, ctx.spec.act, ctx.layout
        g3 = layout.view3(grad)
        e1 = act.error1 if spec.relu else None
        sums = bn_backward_sums(
            g3, src3, p1, p2, *tiled, gamma_q, sigma_q, std, count, spec.k_xhat, spec.xhat_exp,
            spec.relu, e1, act.e1_limit, layout.k, layout.r,
        )  # fmt: skip
        dgamma, dbeta, k0, k1, *factors = sums
        if ctx.relu_obs is not None and e1 is not None:
            from ..quant import device

            ctx.relu_obs("E1", grad.detach(), device.q_shift(grad, e1, act.int8)[0], "SQ", e1,
                         narrow_range=act.int8)  # fmt: skip
        dx = None
        if ctx.needs_input_grad[0]:
            dx3 = bn_backward(
                g3, src3, p1, p2, mean_t, *tiled, k0 if spec.batch_stats else None,
                k1 if spec.batch_stats else None, *factors, spec.k_xhat, spec.xhat_exp,
                spec.relu, e1, act.e1_limit,
            )  # fmt: skip
            dx = layout.back(dx3)
        dgamma = dgamma if ctx.has[0] and ctx.needs_input_grad[1] else None
        dbeta = dbeta if ctx.has[1] and ctx.needs_input_grad[2] else None
        return dx, dgamma, dbeta, None, None, None, None, None, None, None, None


def _observe_forward(obs, relu_obs, x3, gamma, beta, params, spec, out, layout):
    """Report every BN quantizer's (before, after) — and A for a fused ReLU — to the observers.
    Only while diagnostics record: the unrounded intermediates are recomputed here."""
    mean, std, mu_q, sigma_q, gamma_q, beta_q = params[:6]
    mu_t, sigma_t, gamma_t, beta_t = params[6:10]
    t = (x3 - mu_t.view(1, -1, 1)) / sigma_t.view(1, -1, 1)
    k = spec.k_xhat
    xhat = t if k is None else torch.round(t * 2.0 ** (k - 1)) * 2.0 ** (1 - k)
    if obs is not None:
        for role, before, after, bits in (
            ("bn_mean", mean, mu_q, spec.k_mean),
            ("bn_std", std, sigma_q - spec.eps, spec.k_std),
            ("bn_xhat", layout.back(t), layout.back(xhat), spec.k_xhat),
            ("bn_gamma", gamma, gamma_q, spec.k_gamma),
            ("bn_beta", beta, beta_q, spec.k_beta),
        ):
            if before is not None and bits is not None:
                obs(role, before.detach(), after.detach(), "Q", bits)
    if relu_obs is not None and spec.relu and spec.act.activation is not None:
        y = xhat * gamma_t.view(1, -1, 1) + beta_t.view(1, -1, 1)
        relu_obs(
            "A", layout.back(torch.relu(y)), out.detach(), spec.act.a_kind, spec.act.activation
        )


def _rebuild_codes(layout, planes, gamma_t, beta_t, d0, d1, xhat_exp) -> torch.Tensor:
    p2 = planes[2] if len(planes) > 2 else None
    codes = bn_relu_int8_codes(planes[0], planes[1], p2, gamma_t, beta_t, d0, d1, xhat_exp)
    return layout.back(codes)


def _hooked(m: nn.Module) -> bool:
    """Whether forward hooks would observe ``m``'s input or output (then it is not fused)."""
    from torch.nn.modules import module as _module

    return bool(
        m._forward_hooks
        or m._forward_pre_hooks
        or _module._global_forward_hooks
        or _module._global_forward_pre_hooks
    )


def _bn_args(mod: nn.BatchNorm2d) -> dict:
    return {
        "num_features": mod.num_features,
        "eps": mod.eps,
        "momentum": mod.momentum,
        "affine": mod.affine,
        "track_running_stats": mod.track_running_stats,
    }
