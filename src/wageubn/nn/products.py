"""More quantized products: ``QuantConv1d`` and ``QuantEmbedding`` (docs/quantizers.md).

* ``QuantConv1d`` — ``QuantConv2d``'s contract on ``(N, C, L)`` input: ``z = conv1d(x, QC(W, k_W))``
  forward, ``E2 = FQ(dL/dz, k_E2)`` backward. In ``int8`` arithmetic it runs as the integer conv2d
  of ``wageubn.nn.int8`` on ``(N, C, 1, L)`` (a 1×k kernel): the same codes, the same kernels.
* ``QuantEmbedding`` — the weights are W: the forward gathers rows of ``QC(W, k_W)``
  (an embedding is a product with a one-hot input; gathering needs no multiplication), and the
  gradient arriving at the output is E2, ``FQ(dL/dz, k_E2)``, before it is summed into the
  rows of ``dL/dW``. ``int8``: the sum runs on the E2 codes, ``2^(k−1)·coarse + fine``, in an
  integer accumulator (exact), scaled once by ``2^(e−k+1)``. QSGD quantizes that weight gradient
  as G (role ``"weight"``).

With W and E2 ``None`` (``fp32``) both are exactly their ``torch.nn`` classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import WAGEUBNConfig
from ..core.observe import tap
from ..core.roles import QuantModule
from ..quant import device
from .int8 import _Int8Conv2d, products
from .layers import _check_config, quantized_conv, swap_module
from .quantizers import error2, weight_q

__all__ = ["QuantConv1d", "QuantEmbedding"]


def _conv1d_args(mod: nn.Conv1d) -> dict:
    return {
        "in_channels": mod.in_channels,
        "out_channels": mod.out_channels,
        "kernel_size": mod.kernel_size,
        "stride": mod.stride,
        "padding": mod.padding,
        "dilation": mod.dilation,
        "groups": mod.groups,
        "bias": mod.bias is not None,
        "padding_mode": mod.padding_mode,
    }


class QuantConv1d(QuantModule, nn.Conv1d):
    """``nn.Conv1d`` with W quantized in the forward pass and E2 on the output gradient."""

    PARAM_ROLES = {"weight": "weight"}  # QSGD: CQ gradient, 13-bit momentum, 24-bit storage

    def __init__(self, *args, config: WAGEUBNConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = _check_config(config or WAGEUBNConfig())

    @classmethod
    def from_float(cls, mod: nn.Conv1d, config: WAGEUBNConfig) -> QuantConv1d:
        """A quantized layer holding ``mod``'s parameters (the same objects, not copies)."""
        return swap_module(mod, cls, _conv1d_args(mod), config=config)

    def to_float(self) -> nn.Conv1d:
        return swap_module(self, nn.Conv1d, _conv1d_args(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.arithmetic == "int8":
            return self._int8_forward(x)
        obs = tap(self)
        return error2(quantized_conv(self, x, obs), cfg, obs)

    def _int8_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise NotImplementedError(
                "int8 arithmetic runs Conv1d with zero padding given in elements only, got "
                f"padding={self.padding!r}, padding_mode={self.padding_mode!r}"
            )
        unbatched = x.dim() == 2
        x4 = (x.unsqueeze(0) if unbatched else x).unsqueeze(2)  # (N, C, 1, L)
        geom = ((1, self.stride[0]), (0, self.padding[0]), (1, self.dilation[0]), self.groups)
        cfg = self.config
        z = _Int8Conv2d.apply(
            x4, self.weight.unsqueeze(2), self.bias, geom, cfg, products(cfg), tap(self)
        ).squeeze(2)
        return z.squeeze(0) if unbatched else z

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, W={self.config.weight}, E2={self.config.error2}"


def _embedding_args(mod: nn.Embedding) -> dict:
    return {
        "num_embeddings": mod.num_embeddings,
        "embedding_dim": mod.embedding_dim,
        "padding_idx": mod.padding_idx,
        "max_norm": mod.max_norm,
        "norm_type": mod.norm_type,
        "scale_grad_by_freq": mod.scale_grad_by_freq,
        "sparse": mod.sparse,
    }


def embedding_problem(mod: nn.Embedding, config: WAGEUBNConfig) -> str | None:
    """Why this embedding cannot be quantized (None when it can)."""
    if mod.max_norm is not None:
        return (
            f"is an Embedding with max_norm={mod.max_norm}, which renormalizes the stored weights "
            "in place (not on the W grid); use max_norm=None"
        )
    if mod.sparse:
        return "is an Embedding with sparse=True, whose sparse gradient QSGD cannot quantize"
    if mod.scale_grad_by_freq and config.arithmetic == "int8":
        return (
            "is an Embedding with scale_grad_by_freq=True, whose scaled gradient arithmetic='int8' "
            "cannot keep on integer codes"
        )
    return None


class QuantEmbedding(QuantModule, nn.Embedding):
    """``nn.Embedding`` whose rows are read from ``QC(W, k_W)``; E2 on the output gradient."""

    PARAM_ROLES = {"weight": "weight"}  # QSGD: CQ gradient, 13-bit momentum, 24-bit storage

    def __init__(self, *args, config: WAGEUBNConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = _check_config(config or WAGEUBNConfig())

    @classmethod
    def from_float(cls, mod: nn.Embedding, config: WAGEUBNConfig) -> QuantEmbedding:
        return swap_module(mod, cls, _embedding_args(mod), config=config)

    def to_float(self) -> nn.Embedding:
        return swap_module(self, nn.Embedding, _embedding_args(self))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.weight is None and cfg.error2 is None:
            return super().forward(idx)
        problem = embedding_problem(self, cfg)
        if problem:
            raise NotImplementedError(f"QuantEmbedding {problem}")
        obs = tap(self)
        w = weight_q(self.weight, cfg, obs)
        if cfg.arithmetic == "int8":
            return _Int8Embedding.apply(idx, w, self.padding_idx, cfg.error2, obs)
        z = F.embedding(idx, w, self.padding_idx, None, 2.0, self.scale_grad_by_freq, False)
        return error2(z, cfg, obs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, W={self.config.weight}, E2={self.config.error2}"


class _Int8Embedding(torch.autograd.Function):
    """Gather forward; backward: E2 planes summed into the rows as integers (exact)."""

    @staticmethod
    def forward(ctx, idx, w, padding_idx, bits, obs):
        ctx.save_for_backward(idx)
        ctx.meta = (w.shape, padding_idx, bits, obs)
        return F.embedding(idx, w)

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        shape, padding_idx, bits, obs = ctx.meta
        if not ctx.needs_input_grad[1]:
            return None, None, None, None, None
        # int8 planes in grad's layout: FQ = coarse·2^e + fine·2^(e−k+1), NaN guard
        coarse, fine, e, guard = device.q_error2(grad.detach().contiguous(), bits)
        if obs is not None:
            value = device.ldexp(coarse.float(), e) + device.ldexp(fine.float(), e - bits + 1)
            obs("E2", grad.detach(), value + guard, "FQ", bits)
        codes = coarse.to(torch.int32) * (2 ** (bits - 1)) + fine.to(torch.int32)
        # every row sums at most idx.numel() codes of |c| < 2^(2k−2): int64 when int32 could wrap
        wide = torch.int64 if idx.numel() * 2 ** (2 * bits - 2) >= 2**31 else torch.int32
        acc = torch.zeros(shape, dtype=wide, device=grad.device)
        acc.index_add_(0, idx.reshape(-1), codes.reshape(-1, shape[1]).to(wide))
        if padding_idx is not None:
            acc[padding_idx] = 0
        dw = device.ldexp(acc.to(torch.float64), e - (bits - 1)) + guard.double()
        return None, dw.to(grad.dtype), None, None, None
