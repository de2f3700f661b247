"""Quantized conv/linear layers and the quantized activation point (docs/WAGEUBN.md §2).

Forward and backward of one unit::

    a = Q(relu(y), k_A)          QuantReLU       backward: E1 = SQ(dL/da, k_E1)
    z = conv(a, QC(W, k_W))      QuantConv2d     backward: E2 = FQ(dL/dz, k_E2)

Each layer is a subclass of its ``torch.nn`` counterpart holding the *same* parameter objects
(``from_float`` / ``to_float`` swap without copying), so an optimizer built before the swap still
points at the live parameters. With every role ``None`` (``fp32`` preset) the forward and backward
are exactly those of ``torch.nn``.

A conv/linear bias (absent from the released models) is not part of the contract: it stays float.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import WAGEUBNConfig
from ..core.observe import tap
from ..core.roles import QuantModule, release
from ..quant import device
from .activation import ActivationSpec, Layout, activated_by, attach_codes
from .fused import relu_backward, relu_forward
from .quantizers import error2, weight_q

__all__ = ["QuantConv2d", "QuantLayer", "QuantLinear", "QuantReLU", "quantized_conv"]

M = TypeVar("M", bound=nn.Module)


class QuantLayer(Protocol):
    """What every quantized layer of ``wageubn.nn`` has (a ``QuantModule`` and an
    ``nn.Module``): its ``WAGEUBNConfig`` and the swaps from and to its ``torch.nn`` class, which
    hand over the same parameter objects. ``wageubn.convert.QUANT_MODULES`` maps each float
    class to one."""

    config: WAGEUBNConfig

    @classmethod
    def from_float(cls, mod: Any, config: WAGEUBNConfig) -> nn.Module: ...

    def to_float(self) -> nn.Module: ...


def _check_config(config: object) -> WAGEUBNConfig:
    if not isinstance(config, WAGEUBNConfig):
        raise TypeError(
            f"config must be a WAGEUBNConfig, got {type(config).__name__}; "
            "use WAGEUBNConfig.preset('paper')"
        )
    return config


def _conv_args(mod: nn.Conv2d) -> dict:
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


def _linear_args(mod: nn.Linear) -> dict:
    return {
        "in_features": mod.in_features,
        "out_features": mod.out_features,
        "bias": mod.bias is not None,
    }


def swap_module(src: nn.Module, dst_cls: type[M], args: dict[str, Any], **extra: Any) -> M:
    """A ``dst_cls(**args)`` holding ``src``'s parameter and buffer objects (built on the meta
    device: nothing is allocated or copied). The parameters' optimizer roles are now those
    ``dst_cls`` declares (``wageubn.core.roles``): a quantized ``src`` is released."""
    dst = dst_cls(**args, **extra, device="meta")
    _move_parameters(src, dst)
    release(src)
    return dst


def _move_parameters(src: nn.Module, dst: nn.Module) -> None:
    """Give ``dst`` the parameter and buffer objects of ``src`` and its train/eval mode."""
    for name, p in src.named_parameters(recurse=False):
        setattr(dst, name, p)
    for name in list(dst._parameters):
        if name not in src._parameters or src._parameters[name] is None:
            dst._parameters[name] = None
    for name, b in src.named_buffers(recurse=False):
        dst.register_buffer(name, b, persistent=name not in src._non_persistent_buffers_set)
    dst.train(src.training)


def quantized_conv(mod: nn.Conv1d | nn.Conv2d, x: torch.Tensor, obs=None) -> torch.Tensor:
    """``conv(x, QC(W, k_W)) [+ bias]`` for a quantized ``Conv1d``/``Conv2d`` (float arithmetic).

    The backward rebuilds ``QC(W, k_W)`` from the parameter (one fused pass, deterministic: the
    same bits) instead of keeping a float copy of it: a float copy of every weight, not counted
    among the parameters, would outweigh the activations at small batches (ResNet-18, batch 16).
    The gradients are those of ``torch.nn``'s convolution bit for bit (the same
    ``convolution_backward`` call). Inside ``torch.compile`` (the compiler chooses what to keep),
    under autocast, and for string paddings or unbatched input, the plain product runs.
    """
    config: WAGEUBNConfig = mod.config  # type: ignore[assignment]
    wq = weight_q(mod.weight, config, obs)
    if (
        config.weight is None
        or not (torch.is_grad_enabled() and wq.requires_grad)
        or torch.compiler.is_compiling()
        or torch.is_autocast_enabled(x.device.type)
        or isinstance(mod.padding, str)
        or x.dim() != mod.weight.dim()
    ):
        return mod._conv_forward(x, wq, mod.bias)
    padding = mod.padding
    if mod.padding_mode != "zeros":
        x = F.pad(x, mod._reversed_padding_repeated_twice, mode=mod.padding_mode)
        padding = (0,) * (x.dim() - 2)
    geom = (tuple(mod.stride), tuple(padding), tuple(mod.dilation), mod.groups)
    return _RebuiltWeightConv.apply(x, wq, mod.bias, mod.weight, config.weight, geom)


class _RebuiltWeightConv(torch.autograd.Function):
    """``conv(x, wq, bias)`` keeping ``x`` and the parameter ``W`` (not ``wq = QC(W)``) for
    backward; ``W`` receives no gradient here (it flows through ``wq``'s straight-through edge)."""

    @staticmethod
    def forward(ctx, x, wq, bias, weight, bits, geom):
        conv = F.conv2d if wq.dim() == 4 else F.conv1d
        z = conv(x, wq, bias, *geom)
        ctx.save_for_backward(x, weight)
        ctx.meta = (bits, geom, None if bias is None else list(bias.shape))
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        bits, (stride, padding, dilation, groups), bias_sizes = ctx.meta
        wq = device.q_clipped(weight.detach(), bits)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        dx, dwq, db = torch.ops.aten.convolution_backward(
            grad, x, wq, bias_sizes, stride, padding, dilation, False, [0] * len(stride),
            groups, mask,
        )  # fmt: skip
        return dx, dwq, db, None, None, None


class QuantConv2d(QuantModule, nn.Conv2d):
    """``nn.Conv2d`` with W quantized in the forward pass and E2 on the output gradient.

    forward: ``z = conv(x, QC(W, k_W)) [+ bias]``; backward: ``dL/dz ← FQ(dL/dz, k_E2)`` before it
    feeds both ``dL/dx`` and ``dL/dW`` (the weight gradient is quantized by the optimizer, ``CQ``).
    """

    PARAM_ROLES = {"weight": "weight"}  # QSGD: CQ gradient, 13-bit momentum, 24-bit storage

    def __init__(self, *args, config: WAGEUBNConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = _check_config(config or WAGEUBNConfig())

    @classmethod
    def from_float(cls, mod: nn.Conv2d, config: WAGEUBNConfig) -> QuantConv2d:
        """A quantized layer holding ``mod``'s parameters (the same objects, not copies)."""
        return swap_module(mod, cls, _conv_args(mod), config=config)

    def to_float(self) -> nn.Conv2d:
        """The plain ``nn.Conv2d`` with the same parameter objects."""
        return swap_module(self, nn.Conv2d, _conv_args(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.arithmetic == "int8":
            from .int8 import int8_conv2d

            return int8_conv2d(self, x)
        obs = tap(self)
        return error2(quantized_conv(self, x, obs), self.config, obs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, W={self.config.weight}, E2={self.config.error2}"


class QuantLinear(QuantModule, nn.Linear):
    """``nn.Linear`` with W quantized in the forward pass and E2 on the output gradient."""

    PARAM_ROLES = {"weight": "weight"}  # QSGD: CQ gradient, 13-bit momentum, 24-bit storage

    def __init__(self, *args, config: WAGEUBNConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = _check_config(config or WAGEUBNConfig())

    @classmethod
    def from_float(cls, mod: nn.Linear, config: WAGEUBNConfig) -> QuantLinear:
        """A quantized layer holding ``mod``'s parameters (the same objects, not copies)."""
        return swap_module(mod, cls, _linear_args(mod), config=config)

    def to_float(self) -> nn.Linear:
        """The plain ``nn.Linear`` with the same parameter objects."""
        return swap_module(self, nn.Linear, _linear_args(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.arithmetic == "int8":
            from .int8 import int8_linear

            return int8_linear(self, x)
        obs = tap(self)
        z = F.linear(x, weight_q(self.weight, self.config, obs), self.bias)
        return error2(z, self.config, obs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, W={self.config.weight}, E2={self.config.error2}"


class QuantReLU(QuantModule, nn.Module):
    """The quantized activation point: ``a = Q(relu(x), k_A)``; backward ``E1 = SQ(dL/da, k_E1)``.

    E1 sits on ``a`` itself, so it sees ``dL/da`` summed over every consumer of ``a`` (a projection
    shortcut and the next conv, say). One fused kernel each way; what is kept for backward is the
    mask ``x > 0``, packed 8 to a byte. Never in place: ``inplace`` is kept only for ``to_float``.

    When ``quantize_`` fused this ReLU into the ``QuantBatchNorm2d`` before it (``fused_relu``),
    that BN already returns ``a`` and this module passes it through.
    """

    def __init__(self, inplace: bool = False, *, config: WAGEUBNConfig | None = None) -> None:
        super().__init__()
        self.inplace = inplace
        self.config = _check_config(config or WAGEUBNConfig())

    @classmethod
    def from_float(cls, mod: nn.ReLU, config: WAGEUBNConfig) -> QuantReLU:
        return cls(mod.inplace, config=config)

    def to_float(self) -> nn.ReLU:
        return nn.ReLU(inplace=self.inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if activated_by(x) is self:
            return x  # the fused BN before this ReLU applied it already
        cfg = self.config
        if cfg.activation is None and cfg.error1 is None:
            return F.relu(x)
        return _ReLU.apply(x, ActivationSpec.of(cfg), tap(self))

    def extra_repr(self) -> str:
        return f"A={self.config.activation}, E1={self.config.error1}"


class _ReLU(torch.autograd.Function):
    """ReLU + A forward, E1 + mask backward, each one fused kernel (see ``QuantReLU``)."""

    @staticmethod
    def forward(ctx, x, spec: ActivationSpec, obs):
        layout = Layout.of(x)
        xf = layout.flat(x)
        n = xf.numel()
        pad = (-n) % 8  # the mask packs 8 elements a byte
        outs = relu_forward(F.pad(xf, (0, pad)) if pad else xf, spec.activation, spec.int8)
        a = layout.unflat(outs[0][:n] if pad else outs[0])
        if spec.int8 and spec.activation is not None:
            codes = layout.unflat(outs[2][:n] if pad else outs[2])
            attach_codes(a, codes, outs[3], outs[4], spec.activation)
        if obs is not None and spec.activation is not None:
            obs("A", torch.relu(x.detach()), a.detach(), spec.a_kind, spec.activation)
        ctx.save_for_backward(outs[1])
        ctx.n, ctx.layout, ctx.spec, ctx.obs = n, layout, spec, obs
        return a

    @staticmethod
    def backward(ctx, g):
        (packed,) = ctx.saved_tensors
        spec, layout = ctx.spec, ctx.layout
        gf = layout.flat(layout.match(g))
        dx = relu_backward(gf, packed, spec.error1, spec.e1_limit)[0]
        if ctx.obs is not None and spec.error1 is not None:
            e1 = device.q_shift(g, spec.error1, spec.int8)[0]
            ctx.obs("E1", g.detach(), e1, "SQ", spec.error1, narrow_range=spec.int8)
        return layout.unflat(dx), None, None
