"""Quantized shifted-window attention: torchvision's Swin ``ShiftedWindowAttention`` (V1 and V2).

torchvision's module passes ``self.qkv.weight`` and ``self.proj.weight`` to a function instead of
calling its linear layers; this module computes the same windows with every product quantized as
``QuantMultiheadAttention`` does (docs/quantizers.md, "Attention")::

    qkv  = x·QC(W_qkv)ᵀ + b          E2 on the gradient (V2: the key bias is zero, as torchvision)
    s    = A(q)·A(k)ᵀ · d^-1/2       V1;  V2: A(q̂)·A(k̂)ᵀ · exp(min(logit_scale, ln 100)), q̂ = q/|q|
    s    = s + relative position bias (+ the shift mask)          E2 on each product's gradient
    p    = softmax(s)                float; dropout as torchvision
    out  = (A(p)·A(v))·QC(W_proj)ᵀ + b

The relative-position bias table (V1) and the logit scale (V2) stay float: the table is added to
the logits like a bias, the scale is a temperature; V2's bias MLP (``cpb_mlp``) is converted by
``quantize_`` like any ``nn.Sequential``. The ``qkv`` and ``proj`` children become
``QuantLinear`` (their weights get the ``"weight"`` role) and are read here, not called.

torchvision is imported only when a model uses these classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import WAGEUBNConfig
from ..core.observe import tap
from ..core.roles import QuantModule, release
from .attention import quant_bmm, quant_linear
from .layers import _check_config

__all__ = ["QuantShiftedWindowAttention", "QuantShiftedWindowAttentionV2"]

_ATTRS = ("window_size", "shift_size", "num_heads", "attention_dropout", "dropout")


class QuantShiftedWindowAttention(QuantModule, nn.Module):
    """Swin's window attention (V1) with quantized projections and attention products."""

    FLOAT_NAME = "ShiftedWindowAttention"
    LOGIT_SCALE = False  # V2: cosine attention with a learned temperature

    # torchvision's settings and children, given by ``from_float`` (``_take``): types only
    window_size: list[int]
    shift_size: list[int]
    num_heads: int
    attention_dropout: float
    dropout: float
    qkv: nn.Linear
    proj: nn.Linear
    logit_scale: torch.Tensor  # V2 only

    def __init__(self, *, config: WAGEUBNConfig | None = None) -> None:
        super().__init__()
        self.config = _check_config(config or WAGEUBNConfig())

    @classmethod
    def from_float(cls, mod: nn.Module, config: WAGEUBNConfig):
        """A quantized module holding ``mod``'s children, parameters and buffers (same objects)."""
        new = cls(config=config)
        _take(mod, new)
        return new

    def to_float(self) -> nn.Module:
        from torchvision.models import swin_transformer

        float_cls = getattr(swin_transformer, self.FLOAT_NAME)
        new = float_cls.__new__(float_cls)
        nn.Module.__init__(new)
        _take(self, new)
        release(self)
        return new

    def get_relative_position_bias(self) -> torch.Tensor:
        from torchvision.models import swin_transformer

        return getattr(swin_transformer, self.FLOAT_NAME).get_relative_position_bias(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg, obs = self.config, tap(self)
        if cfg.weight is None and cfg.activation is None and cfg.error2 is None:
            from torchvision.models import swin_transformer  # fp32: torchvision's own forward

            return getattr(swin_transformer, self.FLOAT_NAME).forward(self, x)
        ws, heads = self.window_size, self.num_heads
        b, h, w, c = x.shape
        pad_r, pad_b = (ws[1] - w % ws[1]) % ws[1], (ws[0] - h % ws[0]) % ws[0]
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = x.shape[1], x.shape[2]
        shift = [0 if ws[0] >= ph else self.shift_size[0], 0 if ws[1] >= pw else self.shift_size[1]]
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        nw = (ph // ws[0]) * (pw // ws[1])
        x = x.view(b, ph // ws[0], ws[0], pw // ws[1], ws[1], c)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b * nw, ws[0] * ws[1], c)  # (B·nW, N, C)
        bias: torch.Tensor | None = self.qkv.bias
        if self.LOGIT_SCALE and bias is not None:  # V2: no key bias
            bias = torch.cat([bias[:c], torch.zeros_like(bias[c : 2 * c]), bias[2 * c :]])
        qkv = quant_linear(x, self.qkv.weight, bias, cfg, obs)
        n, d = x.shape[1], c // heads
        qkv = qkv.reshape(b * nw, n, 3, heads, d).permute(2, 0, 3, 1, 4).reshape(3, -1, n, d)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B·nW·heads, N, d)
        if self.LOGIT_SCALE:
            attn = quant_bmm(F.normalize(q, dim=-1), F.normalize(k, dim=-1), cfg, obs)
            scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
            attn = (attn.view(-1, heads, n, n) * scale).view(-1, n, n)
        else:
            attn = quant_bmm(q, k, cfg, obs) * d**-0.5
        attn = attn.view(-1, heads, n, n) + self.get_relative_position_bias()
        if sum(shift) > 0:
            mask = _shift_mask(x, ph, pw, ws, shift, nw)
            attn = attn.view(b, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = F.softmax(attn.reshape(-1, n, n), dim=-1)
        attn = F.dropout(attn, p=self.attention_dropout, training=self.training)
        x = quant_bmm(attn, v.transpose(1, 2), cfg, obs)  # (B·nW·heads, N, d)
        x = x.view(b * nw, heads, n, d).transpose(1, 2).reshape(b * nw, n, c)
        x = quant_linear(x, self.proj.weight, self.proj.bias, cfg, obs)
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = x.view(b, ph // ws[0], pw // ws[1], ws[0], ws[1], c)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :h, :w, :].contiguous()

    def extra_repr(self) -> str:
        c = self.config
        return f"window={self.window_size}, W={c.weight}, A={c.activation}, E2={c.error2}"


class QuantShiftedWindowAttentionV2(QuantShiftedWindowAttention):
    """Swin V2's window attention: cosine logits with a learned (float) temperature."""

    FLOAT_NAME = "ShiftedWindowAttentionV2"
    LOGIT_SCALE = True


def _take(src: nn.Module, dst: nn.Module) -> None:
    """Give ``dst`` the children, parameters, buffers, settings and mode of ``src``."""
    for name in _ATTRS:
        setattr(dst, name, getattr(src, name))
    for name, child in src.named_children():
        dst.add_module(name, child)
    for name, p in src.named_parameters(recurse=False):
        dst.register_parameter(name, p)
    for name, buf in src.named_buffers(recurse=False):
        dst.register_buffer(name, buf, persistent=name not in src._non_persistent_buffers_set)
    dst.train(src.training)


def _shift_mask(x, ph, pw, ws, shift, nw) -> torch.Tensor:
    """torchvision's mask of the shifted windows: −100 between pixels from different regions."""
    mask = x.new_zeros((ph, pw))
    hs = ((0, -ws[0]), (-ws[0], -shift[0]), (-shift[0], None))
    wss = ((0, -ws[1]), (-ws[1], -shift[1]), (-shift[1], None))
    count = 0
    for hh in hs:
        for ww in wss:
            mask[hh[0] : hh[1], ww[0] : ww[1]] = count
            count += 1
    mask = mask.view(ph // ws[0], ws[0], pw // ws[1], ws[1]).permute(0, 2, 1, 3)
    mask = mask.reshape(nw, ws[0] * ws[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
