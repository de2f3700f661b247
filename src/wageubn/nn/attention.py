"""Quantized multi-head attention (docs/quantizers.md, "Attention").

``QuantMultiheadAttention`` computes ``nn.MultiheadAttention`` with every product quantized::

    q, k, v = x_q·QC(W_q)ᵀ, x_k·QC(W_k)ᵀ, x_v·QC(W_v)ᵀ (+ float bias)   backward: E2 on each output
    s       = (A(q_h) · A(k_h)ᵀ) / sqrt(d)  (+ mask)                     backward: E2 on A(q)·A(k)ᵀ
    p       = softmax(s)   (float, forward and backward; dropout as PyTorch)
    o_h     = A(p) · A(v_h)                                            backward: E2 on o_h
    out     = concat_h(o_h)·QC(W_o)ᵀ (+ float bias)   (``out_proj``, a ``QuantLinear``)

A is the activation quantizer (``Q(·, k_A)``; ``int8``: the fit grid) and passes the gradient
straight through; E2 is ``FQ(·, k_E2)`` on the gradient of each product's output, the one that feeds
both operands' gradients (as at a conv). The softmax stays float — there is no switch to quantize
it; its output enters ``p·v`` quantized as A. The scale ``1/sqrt(d)`` multiplies the product's
float result (PyTorch scales ``q`` before the product instead). In ``int8`` arithmetic the
projections run on ``wageubn.nn.int8``'s integer linear and the two attention products on the
integer ``linear_*`` kernels, one call per (batch, head) and E2 plane.

``add_bias_kv`` and ``add_zero_attn`` are not supported (``attention_problem``). With W, A and E2
all ``None`` (``fp32``) the module runs ``nn.MultiheadAttention.forward``, bit for bit.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..config import WAGEUBNConfig
from ..core.observe import tap
from ..core.roles import QuantModule
from ..quant import device
from .int8 import _Int8Linear, operand_codes, products
from .layers import QuantLinear, _check_config, _linear_args, swap_module
from .quantizers import activation_q, error2, weight_q

__all__ = ["QuantMultiheadAttention", "attention_problem", "quant_bmm", "quant_linear"]


def attention_problem(mod: nn.MultiheadAttention) -> str | None:
    """Why this attention cannot be quantized (None when it can)."""
    if mod.bias_k is not None or mod.add_zero_attn:
        return (
            "is a MultiheadAttention with add_bias_kv or add_zero_attn, which the quantized "
            "attention does not implement; build it without them or exclude it with filter_fn"
        )
    return None


def _mha_args(mod: nn.MultiheadAttention) -> dict:
    return {
        "embed_dim": mod.embed_dim,
        "num_heads": mod.num_heads,
        "dropout": mod.dropout,
        "bias": mod.in_proj_bias is not None,
        "add_bias_kv": mod.bias_k is not None,
        "add_zero_attn": mod.add_zero_attn,
        "kdim": mod.kdim,
        "vdim": mod.vdim,
        "batch_first": mod.batch_first,
    }


class QuantMultiheadAttention(QuantModule, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with quantized projections and attention products."""

    OWNS_CHILDREN = True  # quantize_ converts out_proj with it (and back with to_float)
    # (1) torch declares out_proj a NonDynamicallyQuantizableLinear; here it is a QuantLinear
    PARAM_ROLES = {r: "weight" for r in ("in_proj_weight", "q_proj_weight", "k_proj_weight",
                                         "v_proj_weight")}  # fmt: skip

    def __init__(self, *args, config: WAGEUBNConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = _check_config(config or WAGEUBNConfig())
        self.out_proj = QuantLinear.from_float(self.out_proj, self.config)  # type: ignore[assignment]  # (1)

    @property
    def config(self) -> WAGEUBNConfig:
        return self.__dict__["_config"]

    @config.setter
    def config(self, config: WAGEUBNConfig) -> None:
        self.__dict__["_config"] = config
        if isinstance(self.__dict__.get("_modules", {}).get("out_proj"), QuantLinear):
            cast(QuantLinear, self.out_proj).config = config

    @classmethod
    def from_float(cls, mod: nn.MultiheadAttention, config: WAGEUBNConfig):
        """A quantized attention holding ``mod``'s parameters (the same objects)."""
        new = swap_module(mod, cls, _mha_args(mod), config=config)
        new.out_proj = QuantLinear.from_float(mod.out_proj, config)  # type: ignore[assignment]  # (1)
        return new

    def to_float(self) -> nn.MultiheadAttention:
        new = swap_module(self, nn.MultiheadAttention, _mha_args(self))
        new.out_proj = swap_module(self.out_proj, type(new.out_proj), _linear_args(self.out_proj))
        return new

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        if cfg.weight is None and cfg.activation is None and cfg.error2 is None:
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)  # fmt: skip
        problem = attention_problem(self)
        if problem:
            raise NotImplementedError(f"QuantMultiheadAttention {problem}")
        batched = query.dim() == 3
        if not batched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        tgt, n, e = query.shape  # (L, N, E), sequence first from here on
        src, h = key.shape[0], self.num_heads
        d = e // h
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq = bk = bv = None
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias.chunk(3)
        obs = tap(self)
        q = self._project(query, wq, bq, obs).reshape(tgt, n * h, d).transpose(0, 1)
        k = self._project(key, wk, bk, obs).reshape(src, n * h, d).transpose(0, 1)
        v = self._project(value, wv, bv, obs).reshape(src, n * h, d).transpose(0, 1)
        mask = _merged_mask(attn_mask, key_padding_mask, n, h, tgt, src, q.dtype)
        s = self._product(q, k, obs) * (1.0 / math.sqrt(d))  # (N·H, L, S)
        if mask is not None:
            s = s + mask
        p = F.softmax(s, dim=-1)
        if self.training and self.dropout > 0:
            p = F.dropout(p, self.dropout)
        o = self._product(p, v.transpose(1, 2), obs)  # (N·H, L, d)
        out = self.out_proj(o.transpose(0, 1).reshape(tgt * n, e)).view(tgt, n, -1)
        weights = None
        if need_weights:
            weights = p.view(n, h, tgt, src)
            weights = weights.mean(dim=1) if average_attn_weights else weights
            weights = weights if batched else weights.squeeze(0)
        if not batched:
            return out.squeeze(1), weights
        return (out.transpose(0, 1) if self.batch_first else out), weights

    def _project(self, x, w, b, obs) -> torch.Tensor:
        return quant_linear(x, w, b, self.config, obs)

    def _product(self, a, c, obs) -> torch.Tensor:
        return quant_bmm(a, c, self.config, obs)

    def extra_repr(self) -> str:
        c = self.config
        return f"W={c.weight}, A={c.activation}, E2={c.error2}, softmax=float"


def quant_linear(x, w, b, config: WAGEUBNConfig, obs=None) -> torch.Tensor:
    """``x·QC(w)ᵀ + b`` with E2 on the output gradient, as ``QuantLinear`` computes it (integer
    kernels in ``int8``) — for a layer that owns the weight ``w`` and tags it as a weight."""
    if config.arithmetic == "int8":
        z = _Int8Linear.apply(x.reshape(-1, x.shape[-1]), w, b, config, products(config), obs)
        return z.reshape(*x.shape[:-1], w.shape[0])
    return error2(F.linear(x, weight_q(w, config, obs), b), config, obs)


def quant_bmm(a, c, config: WAGEUBNConfig, obs=None) -> torch.Tensor:
    """``A(a) · A(c)ᵀ`` per batch element (``(B, M, K)`` by ``(B, N, K)``), E2 on the gradient of
    the product (integer kernels in ``int8``)."""
    if config.arithmetic == "int8":
        return _Int8Bmm.apply(a, c, config, obs)
    z = torch.bmm(activation_q(a, config, obs), activation_q(c, config, obs).transpose(1, 2))
    return error2(z, config, obs)


def _merged_mask(attn_mask, key_padding_mask, n, h, tgt, src, dtype):
    """One additive float mask ``(N·H or 1, L, S)`` from PyTorch's two (bool: True = masked)."""
    merged = None
    if attn_mask is not None:
        merged = _additive(attn_mask, dtype)
        merged = merged.unsqueeze(0) if merged.dim() == 2 else merged
    if key_padding_mask is not None:
        kpm = _additive(key_padding_mask, dtype).view(n, 1, 1, src).expand(-1, h, -1, -1)
        kpm = kpm.reshape(n * h, 1, src)
        merged = kpm if merged is None else merged + kpm
    return merged


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, float("-inf")
        )
    return mask.to(dtype)


class _Int8Bmm(torch.autograd.Function):
    """``z[b] = a[b] · c[b]ᵀ`` on int8 codes (A of both operands, one exponent per tensor);
    backward: E2 planes of ``dL/dz``, ``da = E2·c`` and ``dc = E2ᵀ·a``, each an integer product."""

    @staticmethod
    def forward(ctx, a, c, config, obs):
        bits = config.activation
        ca = operand_codes(a, bits)  # (B, M, K) int8
        cc = operand_codes(c, bits)  # (B, N, K) int8
        if obs is not None:
            for t, codes in ((a, ca), (c, cc)):
                obs("A", t.detach(), _ldexp(codes.codes, codes.exponent), "fit", bits)
        be = config.int8_backend
        acodes, ccodes = ca.codes.contiguous(), cc.codes.contiguous()
        guard = ca.guard + cc.guard  # either operand not finite: every output NaN
        if be == "float":
            z = torch.bmm(_ldexp(acodes, ca.exponent) + guard, _ldexp(ccodes, cc.exponent).mT)
        else:
            x = acodes.view(torch.uint8) if ca.nonneg else acodes
            e = ca.exponent + cc.exponent
            z = torch.stack([
                kernels.linear_forward(x[i], ccodes[i], backend=be, out_exponent=e, out_guard=guard)
                for i in range(x.shape[0])
            ])  # fmt: skip
        ctx.save_for_backward(acodes, ccodes, ca.exponent, cc.exponent)
        ctx.meta = (ca.nonneg, config, obs)
        return z

    @staticmethod
    def backward(ctx, g):
        a_codes, c_codes, ea, ec = ctx.saved_tensors
        nonneg, config, obs = ctx.meta
        bits, be = config.error2, config.int8_backend
        # (B, M, N) int8 planes: FQ = coarse·2^e + fine·2^(e−k+1), each element in one plane
        coarse, fine, e, guard = device.q_error2(g.detach().contiguous(), bits)
        if obs is not None:
            obs("E2", g.detach(), _planes_value(coarse, fine, e, guard, bits), "FQ", bits)
        da = dc = None
        if be == "float":
            err = _planes_value(coarse, fine, e, guard, bits)
            if ctx.needs_input_grad[0]:
                da = torch.bmm(err, _ldexp(c_codes, ec))
            if ctx.needs_input_grad[1]:
                dc = torch.bmm(err.transpose(1, 2), _ldexp(a_codes, ea))
            return da, dc, None, None
        x = a_codes.view(torch.uint8) if nonneg else a_codes
        m, n = g.shape[1], g.shape[2]
        e_fine = e - (bits - 1)
        if ctx.needs_input_grad[0]:  # both planes stacked along M: one product per element
            accs = [kernels.linear_input_grad(torch.cat([coarse[i], fine[i]]), c_codes[i],
                                              backend=be) for i in range(g.shape[0])]  # fmt: skip
            acc = torch.stack(accs)  # (B, 2M, K) exact integers
            da = _combine(acc[:, :m], acc[:, m:], bits, e_fine + ec, guard)
        if ctx.needs_input_grad[1]:  # side by side along N
            accs = [kernels.linear_weight_grad(torch.cat([coarse[i], fine[i]], dim=1), x[i],
                                               backend=be) for i in range(g.shape[0])]  # fmt: skip
            acc = torch.stack(accs)  # (B, 2N, K)
            dc = _combine(acc[:, :n], acc[:, n:], bits, e_fine + ea, guard)
        return da, dc, None, None


def _combine(coarse_acc, fine_acc, bits: int, e: torch.Tensor, guard: torch.Tensor):
    """``(2^(k−1)·coarse + fine) · 2^e`` rounded once to float32 (float64 holds the sums exactly
    while ``|acc| < 2^53 / 2^(k−1)``; the kernels refuse longer sums)."""
    acc = coarse_acc.double().mul_(float(2 ** (bits - 1))).add_(fine_acc.double())
    return (device.ldexp(acc, e) + guard.double()).float()


def _planes_value(coarse, fine, e, guard, bits: int) -> torch.Tensor:
    """The float32 value of E2 planes (+ the NaN guard)."""
    value = device.ldexp(coarse.float(), e) + device.ldexp(fine.float(), e - bits + 1)
    return value + guard


def _ldexp(codes: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    return device.decode(codes, e, torch.float32)
