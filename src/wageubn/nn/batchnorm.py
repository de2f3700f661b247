"""Quantized batch normalization (docs/WAGEUBN.md §2, "BatchNorm forward").

Training uses the batch statistics over (N, H, W) with the biased variance; eval the running
statistics::

    mu_q    = Q(mu, k_mu)                        # 16 bits
    sigma_q = Q(sqrt(var), k_sigma) + eps        # 16 bits; the STANDARD DEVIATION is quantized,
                                                 # eps = 2^-15 added after
    x_hat   = Q((x - mu_q) / sigma_q, k_xhat)    # 8 bits
    y       = x_hat * Q(gamma, k_gamma) + Q(beta, k_beta)   # y itself is not re-quantized

Every quantizer passes the gradient straight through (μ and σ included) and the rest of the
backward is ordinary float autograd. Running statistics stay float and are updated as
``torch.nn.BatchNorm2d`` updates them (unbiased variance, the module's ``momentum``; cumulative
average when ``momentum`` is None).

With every BN role ``None`` the layer *is* ``torch.nn.BatchNorm2d`` (``F.batch_norm``, ε inside the
square root), bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import WAGEUBNConfig
from .layers import _check_config, retag, swap_module
from .observe import tap
from .quantizers import forward_q

__all__ = ["QuantBatchNorm2d"]


class QuantBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with μ, σ, x̂, γ, β quantized as in the released code."""

    PARAM_ROLES = {"weight": "bn", "bias": "bn"}  # QSGD: Q(g, 15) gradients, no weight decay

    def __init__(self, *args, config: WAGEUBNConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = _check_config(config or WAGEUBNConfig())
        retag(self)

    @classmethod
    def from_float(cls, mod: nn.BatchNorm2d, config: WAGEUBNConfig) -> QuantBatchNorm2d:
        """A quantized BN holding ``mod``'s parameters and running statistics (same objects)."""
        return swap_module(mod, cls, _bn_args(mod), config=config)

    def to_float(self) -> nn.BatchNorm2d:
        return swap_module(self, nn.BatchNorm2d, _bn_args(self))

    def __setstate__(self, state: dict) -> None:
        # copy.deepcopy and pickle rebuild parameters without their attributes: tag them again
        super().__setstate__(state)
        retag(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.config.bn_quantized:
            return super().forward(x)
        self._check_input_dim(x)
        cfg = self.config
        if cfg.arithmetic == "int8":
            from .int8_elementwise import int8_batch_norm

            return int8_batch_norm(self, x, tap(self))
        use_batch_stats = self.training or self.running_mean is None
        if use_batch_stats:
            dims = (0, 2, 3)
            mean = x.mean(dims)
            var = x.var(dims, unbiased=False)
            if self.training and self.track_running_stats and self.running_mean is not None:
                self._update_running_stats(mean.detach(), var.detach(), x.numel() // x.shape[1])
        else:
            mean, var = self.running_mean, self.running_var
        obs = tap(self)
        mean_q = forward_q(mean, cfg.bn_mean, obs, "bn_mean")
        std_q = forward_q(torch.sqrt(var), cfg.bn_std, obs, "bn_std") + cfg.bn_eps
        xhat = forward_q(
            (x - mean_q[:, None, None]) / std_q[:, None, None], cfg.bn_xhat, obs, "bn_xhat"
        )
        if self.weight is not None:
            xhat = xhat * forward_q(self.weight, cfg.bn_gamma, obs, "bn_gamma")[:, None, None]
        if self.bias is not None:
            xhat = xhat + forward_q(self.bias, cfg.bn_beta, obs, "bn_beta")[:, None, None]
        return xhat

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        """``torch.nn.BatchNorm2d``'s update: unbiased variance, exponential or cumulative average."""
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        unbiased = var * (n / (n - 1)) if n > 1 else var
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{super().extra_repr()}, mu={c.bn_mean}, sigma={c.bn_std}, xhat={c.bn_xhat}, "
            f"gamma={c.bn_gamma}, beta={c.bn_beta}"
        )


def _bn_args(mod: nn.BatchNorm2d) -> dict:
    return {
        "num_features": mod.num_features,
        "eps": mod.eps,
        "momentum": mod.momentum,
        "affine": mod.affine,
        "track_running_stats": mod.track_running_stats,
    }
