"""Quantized normalizations beyond BatchNorm2d: LayerNorm, GroupNorm, BatchNorm1d and torchvision's
``LayerNorm2d`` (ConvNeXt), on the BN contract of docs/WAGEUBN.md §2.

For each normalization group (a row of LayerNorm, a (sample, group) of GroupNorm, a pixel's
channel vector of LayerNorm2d) with ``M`` elements, the batch statistics are those of BN::

    mean, var = Σx / M, max(Σx² / M − mean², 0)    (sums in float64, then float32; biased variance)
    mu_q    = Q(mean, k_mu)                       # 16 bits
    sigma_q = Q(sqrt(var), k_sigma) + eps          # 16 bits; eps = config.bn_eps (2^-15) after σ
    x_hat   = Q((x − mu_q) / sigma_q, k_xhat)      # 8 bits
    y       = x_hat · Q(gamma, k_gamma) + Q(beta, k_beta)   # 8, 8 (per element of normalized_shape
                                                            # or per channel); y is not re-quantized

Every quantizer passes the gradient straight through; the backward is the derivative of the
unrounded formula (``g = dL/dy``, ``dt = g · gamma_q``, sums per group in float64)::

    dgamma = Σ g·x_hat      dbeta = Σ g          (over everything but gamma's own axes)
    d_mu_q = −Σ dt / sigma_q                      d_sigma_q = −Σ dt·t / sigma_q
    d_var  = d_sigma_q / (2·std), or 0 where std = 0 (the finite limit: x − mean is 0 there)
    dx     = dt / sigma_q + d_mu_q / M + (x − mean) · 2·d_var / M

These layers have no running statistics: training and evaluation compute the same thing. The
gradients of gamma and beta are quantized by ``QSGD`` (role ``"bn"``: ``Q(g, 15)``, no weight
decay). ``int8`` arithmetic computes them the same way (elementwise steps may be float, §6); the
next conv/linear derives its A codes from ``y``. With every BN role ``None`` (``fp32``) each layer
runs its ``torch.nn`` forward, bit for bit (ε then inside the square root, as PyTorch puts it).

``QuantBatchNorm1d`` is ``QuantBatchNorm2d`` (whose kernels take ``(N, C)`` and ``(N, C, L)``
input) with ``BatchNorm1d``'s input check: running statistics, fused ReLU and int8 x̂ codes as
there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import WAGEUBNConfig
from ..core.observe import tap
from ..core.roles import QuantModule
from ..quant import device
from .batchnorm import QuantBatchNorm2d, _bn_args
from .layers import _check_config, swap_module

__all__ = [
    "QuantBatchNorm1d",
    "QuantGroupNorm",
    "QuantLayerNorm",
    "QuantLayerNorm2d",
    "normalize",
]


@dataclass(frozen=True)
class NormSpec:
    """The BN roles of one call (a hashable constant)."""

    eps: float
    k_mean: int | None
    k_std: int | None
    k_xhat: int | None
    k_gamma: int | None
    k_beta: int | None

    @classmethod
    def of(cls, config: WAGEUBNConfig) -> NormSpec:
        return cls(
            float(config.bn_eps), config.bn_mean, config.bn_std, config.bn_xhat,
            config.bn_gamma, config.bn_beta,
        )  # fmt: skip


def _q(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    return x if bits is None else device.q_direct(x, bits)


def normalize(
    x: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    dims: tuple[int, ...],
    spec: NormSpec,
    owner: object = None,
) -> torch.Tensor:
    """The quantized normalization of the module docstring: statistics of ``x`` over ``dims``
    (kept), ``gamma``/``beta`` already shaped to broadcast against ``x`` (or None)."""
    return _Norm.apply(x, gamma, beta, dims, spec, tap(owner))


class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta, dims, spec: NormSpec, obs):
        m = math.prod(x.shape[d] for d in dims)
        xd = x.to(torch.float64)
        mean64 = xd.sum(dims, keepdim=True) / m
        var = torch.clamp((xd * xd).sum(dims, keepdim=True) / m - mean64 * mean64, min=0.0)
        mean, var = mean64.to(x.dtype), var.to(x.dtype)
        std = torch.sqrt(var)
        mu_q = _q(mean, spec.k_mean)
        sigma_q = _q(std, spec.k_std) + spec.eps
        t = (x - mu_q) / sigma_q
        xhat = _q(t, spec.k_xhat)
        gamma_q = None if gamma is None else _q(gamma.detach(), spec.k_gamma)
        beta_q = None if beta is None else _q(beta.detach(), spec.k_beta)
        y = xhat if gamma_q is None else xhat * gamma_q
        y = y if beta_q is None else y + beta_q
        y = y.detach() if y._is_view() else y  # a tensor of its own: callers may modify it in place
        if obs is not None:
            for role, before, after, bits in (
                ("bn_mean", mean, mu_q, spec.k_mean),
                ("bn_std", std, sigma_q - spec.eps, spec.k_std),
                ("bn_xhat", t, xhat, spec.k_xhat),
                ("bn_gamma", gamma, gamma_q, spec.k_gamma),
                ("bn_beta", beta, beta_q, spec.k_beta),
            ):
                if before is not None and bits is not None:
                    obs(role, before.detach(), after, "Q", bits)
        ctx.save_for_backward(x, mean, std, mu_q, sigma_q, gamma_q)
        ctx.dims, ctx.m, ctx.k_xhat = dims, m, spec.k_xhat
        ctx.param_shapes = (
            None if gamma is None else gamma.shape,
            None if beta is None else beta.shape,
        )
        return y

    @staticmethod
    def backward(ctx, g):
        x, mean, std, mu_q, sigma_q, gamma_q = ctx.saved_tensors
        dims, m = ctx.dims, ctx.m
        t = (x - mu_q) / sigma_q  # recomputed: the same float32 operations as the forward
        dgamma = dbeta = dx = None
        g_shape, b_shape = ctx.param_shapes
        if g_shape is not None and ctx.needs_input_grad[1]:
            xhat = _q(t, ctx.k_xhat)
            dgamma = _sum_to(g.to(torch.float64) * xhat.to(torch.float64), g_shape).to(g.dtype)
        if b_shape is not None and ctx.needs_input_grad[2]:
            dbeta = _sum_to(g.to(torch.float64), b_shape).to(g.dtype)
        if ctx.needs_input_grad[0]:
            dt = g if gamma_q is None else g * gamma_q
            dt64 = dt.to(torch.float64)
            s0 = dt64.sum(dims, keepdim=True)
            s2 = (dt64 * t.to(torch.float64)).sum(dims, keepdim=True)
            sq, sd = sigma_q.to(torch.float64), std.to(torch.float64)
            d_mu = -s0 / sq
            d_var = torch.where(sd > 0, (-s2 / sq) / (2.0 * sd), 0.0)
            k0 = (d_mu / m).to(x.dtype)
            k1 = (2.0 * d_var / m).to(x.dtype)
            dx = dt / sigma_q + k0 + (x - mean) * k1
        return dx, dgamma, dbeta, None, None, None


def _sum_to(v: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``v`` summed over the axes where ``shape`` (same rank) is 1."""
    axes = tuple(i for i, (a, b) in enumerate(zip(v.shape, shape, strict=True)) if a != b)
    return v.sum(axes, keepdim=True) if axes else v


class QuantLayerNorm(QuantModule, nn.LayerNorm):
    """``nn.LayerNorm`` on the BN contract: statistics over ``normalized_shape`` per row,
    ``gamma``/``beta`` per element of ``normalized_shape``."""

    PARAM_ROLES = {"weight": "bn", "bias": "bn"}  # QSGD: Q(g, 15) gradients, no weight decay

    def __init__(self, *args, config: WAGEUBNConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = _check_config(config or WAGEUBNConfig())

    @classmethod
    def float_args(cls, mod: nn.LayerNorm) -> dict:
        return {
            "normalized_shape": mod.normalized_shape,
            "eps": mod.eps,
            "elementwise_affine": mod.elementwise_affine,
            "bias": mod.bias is not None or not mod.elementwise_affine,
        }

    @classmethod
    def from_float(cls, mod: nn.LayerNorm, config: WAGEUBNConfig) -> QuantLayerNorm:
        return swap_module(mod, cls, cls.float_args(mod), config=config)

    def to_float(self) -> nn.LayerNorm:
        return swap_module(self, nn.LayerNorm, self.float_args(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.config.bn_quantized:
            return super().forward(x)
        d = len(self.normalized_shape)
        if tuple(x.shape[x.dim() - d :]) != tuple(self.normalized_shape):
            return F.layer_norm(x, self.normalized_shape)  # PyTorch's own shape error
        lead = x.shape[: x.dim() - d]
        rows = x.reshape(-1, math.prod(self.normalized_shape))  # (R, M)
        gamma = None if self.weight is None else self.weight.reshape(1, -1)
        beta = None if self.bias is None else self.bias.reshape(1, -1)
        y = normalize(rows, gamma, beta, (1,), NormSpec.of(self.config), self)
        return y.reshape(*lead, *self.normalized_shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {_roles(self.config)}"


class QuantLayerNorm2d(QuantLayerNorm):
    """torchvision's ``LayerNorm2d`` (ConvNeXt): a LayerNorm over the channels of each pixel of
    ``(N, C, H, W)`` input; the same contract as ``QuantLayerNorm``. ``to_float`` gives back
    ``torchvision.models.convnext.LayerNorm2d``."""

    def to_float(self) -> nn.LayerNorm:
        return swap_module(self, _layer_norm2d(), self.float_args(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.config.bn_quantized:
            return _layer_norm2d().forward(self, x)
        if x.dim() != 4 or (x.shape[1],) != tuple(self.normalized_shape):
            raise ValueError(
                f"LayerNorm2d: expected (N, {self.normalized_shape[0]}, H, W) input, got "
                f"{tuple(x.shape)}"
            )
        n, c, h, w = x.shape
        pixels = x.reshape(n, c, h * w)  # statistics over C, per (sample, pixel)
        gamma = None if self.weight is None else self.weight.view(1, c, 1)
        beta = None if self.bias is None else self.bias.view(1, c, 1)
        y = normalize(pixels, gamma, beta, (1,), NormSpec.of(self.config), self)
        return y.view(n, c, h, w)


def _layer_norm2d() -> type[nn.LayerNorm]:
    """torchvision's ``LayerNorm2d`` (imported only when a model uses it)."""
    from torchvision.models.convnext import LayerNorm2d

    return LayerNorm2d


class QuantGroupNorm(QuantModule, nn.GroupNorm):
    """``nn.GroupNorm`` on the BN contract: statistics over each (sample, group of channels),
    ``gamma``/``beta`` per channel."""

    PARAM_ROLES = {"weight": "bn", "bias": "bn"}  # QSGD: Q(g, 15) gradients, no weight decay

    def __init__(self, *args, config: WAGEUBNConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = _check_config(config or WAGEUBNConfig())

    @staticmethod
    def float_args(mod: nn.GroupNorm) -> dict:
        return {
            "num_groups": mod.num_groups,
            "num_channels": mod.num_channels,
            "eps": mod.eps,
            "affine": mod.affine,
        }

    @classmethod
    def from_float(cls, mod: nn.GroupNorm, config: WAGEUBNConfig) -> QuantGroupNorm:
        return swap_module(mod, cls, cls.float_args(mod), config=config)

    def to_float(self) -> nn.GroupNorm:
        return swap_module(self, nn.GroupNorm, self.float_args(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.config.bn_quantized:
            return super().forward(x)
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            return F.group_norm(x, self.num_groups)  # PyTorch's own shape error
        n, c, gr = x.shape[0], self.num_channels, self.num_groups
        groups = x.reshape(n, gr, c // gr, -1)  # (N, G, C/G, spatial)
        gamma = None if self.weight is None else self.weight.view(1, gr, c // gr, 1)
        beta = None if self.bias is None else self.bias.view(1, gr, c // gr, 1)
        y = normalize(groups, gamma, beta, (2, 3), NormSpec.of(self.config), self)
        return y.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {_roles(self.config)}"


class QuantBatchNorm1d(QuantBatchNorm2d, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (``(N, C)`` or ``(N, C, L)`` input) with μ, σ, x̂, γ, β quantized: the
    machinery of ``QuantBatchNorm2d``, statistics over (N, L)."""

    _check_input_dim = nn.BatchNorm1d._check_input_dim

    @classmethod
    def from_float(cls, mod: nn.BatchNorm1d, config: WAGEUBNConfig) -> QuantBatchNorm1d:  # type: ignore[override]
        # _bn_args (nn/batchnorm.py) reads what every BatchNorm has; it is annotated BatchNorm2d
        return swap_module(mod, cls, _bn_args(mod), config=config)  # type: ignore[arg-type]

    def to_float(self) -> nn.BatchNorm1d:  # type: ignore[override]
        return swap_module(self, nn.BatchNorm1d, _bn_args(self))


def _roles(c: WAGEUBNConfig) -> str:
    return (
        f"mu={c.bn_mean}, sigma={c.bn_std}, xhat={c.bn_xhat}, gamma={c.bn_gamma}, beta={c.bn_beta}"
    )
