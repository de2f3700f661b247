"""Quantized activation points beyond ReLU: ReLU6, LeakyReLU, Hardswish, Hardsigmoid, SiLU, GELU,
Sigmoid, Tanh (docs/quantizers.md, "Other activations").

Each keeps ``QuantReLU``'s contract (docs/WAGEUBN.md §2) with ``f`` in place of ``relu``::

    forward    a  = Q(f(x), k_A)          paper: direct quantizer, 2^(1−k_A) grid, no clipping
                                          int8:  fit grid, codes within ±127, per-tensor 2^e
    backward   e1 = SQ(dL/da, k_E1)       int8: narrow range, codes within ±127
               dL/dx = f'(x) · e1         f' in float: PyTorch's own derivative of f

The A quantizer passes the gradient straight through; E1 sits on ``a`` itself, so it sees ``dL/da``
summed over every consumer of ``a``. ``f'`` is PyTorch's backward formula of ``f`` (the ``aten``
``*_backward`` op autograd itself calls) applied to E1: piecewise constant for ReLU6, LeakyReLU
and Hardsigmoid (a mask, a slope), a float function of ``x`` for Hardswish, SiLU and GELU, of the
float output ``f(x)`` for Sigmoid and Tanh. It is not re-quantized: the next quantization on the
way back is E2 at the conv/linear that produced ``x``.

In ``int8`` arithmetic the activations whose output is non-negative by construction (ReLU6,
Hardsigmoid, Sigmoid) attach their A codes to ``a`` for the conv/linear that consumes it; signed
outputs are returned as float A values on the fit grid, and the consumer derives its codes.

Never in place: ``inplace`` is kept only for ``to_float``. With A and E1 both ``None`` (``fp32``)
each module runs its ``torch.nn`` forward, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import WAGEUBNConfig
from ..core.observe import tap
from ..core.roles import QuantModule
from ..quant import device
from .activation import ActivationSpec, attach_codes
from .layers import _check_config

__all__ = [
    "QUANT_ACTIVATIONS",
    "ActivationKind",
    "QuantActivation",
    "QuantGELU",
    "QuantHardsigmoid",
    "QuantHardswish",
    "QuantLeakyReLU",
    "QuantReLU6",
    "QuantSiLU",
    "QuantSigmoid",
    "QuantTanh",
    "quant_activation",
]

_aten = torch.ops.aten


@dataclass(frozen=True)
class ActivationKind:
    """Which ``f`` an activation point applies (a hashable constant; ``slope`` and
    ``approximate`` only for LeakyReLU and GELU)."""

    name: str
    slope: float = 0.01
    approximate: str = "none"

    @property
    def nonneg(self) -> bool:
        """``f(x) >= 0`` for every ``x``: int8 codes may be attached (read as uint8)."""
        return self.name in ("relu6", "hardsigmoid", "sigmoid")

    @property
    def saves_output(self) -> bool:
        """The derivative is written in ``f(x)`` (Sigmoid, Tanh), not in ``x``."""
        return self.name in ("sigmoid", "tanh")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` with PyTorch's functional (the same kernel ``torch.nn`` runs)."""
        n = self.name
        if n == "relu6":
            return F.relu6(x)
        if n == "leaky_relu":
            return F.leaky_relu(x, self.slope)
        if n == "hardswish":
            return F.hardswish(x)
        if n == "hardsigmoid":
            return F.hardsigmoid(x)
        if n == "silu":
            return F.silu(x)
        if n == "gelu":
            return F.gelu(x, approximate=self.approximate)
        if n == "sigmoid":
            return torch.sigmoid(x)
        return torch.tanh(x)

    def derivative(self, g: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``f'(x) · g``, PyTorch's backward formula of ``f`` (``y = f(x)`` for Sigmoid/Tanh)."""
        n = self.name
        if n == "relu6":
            return _aten.hardtanh_backward(g, x, 0.0, 6.0)
        if n == "leaky_relu":
            return _aten.leaky_relu_backward(g, x, self.slope, False)
        if n == "hardswish":
            return _aten.hardswish_backward(g, x)
        if n == "hardsigmoid":
            return _aten.hardsigmoid_backward(g, x)
        if n == "silu":
            return _aten.silu_backward(g, x)
        if n == "gelu":
            return _aten.gelu_backward(g, x, approximate=self.approximate)
        if n == "sigmoid":
            return _aten.sigmoid_backward(g, y)
        return _aten.tanh_backward(g, y)


def quant_activation(
    x: torch.Tensor, kind: ActivationKind, config: WAGEUBNConfig, owner: object = None
) -> torch.Tensor:
    """``a = A(f(x))`` forward, ``dL/dx = f'(x)·E1(dL/da)`` backward (see the module docstring);
    ``f(x)`` itself when A and E1 are both ``None``. ``owner`` names the observation point for
    the diagnostics (the module)."""
    if config.activation is None and config.error1 is None:
        return kind.apply(x)
    return _Activation.apply(x, kind, ActivationSpec.of(config), tap(owner))


class _Activation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind: ActivationKind, spec: ActivationSpec, obs):
        y = kind.apply(x)
        bits = spec.activation
        codes = None
        if bits is None:
            a = y
        elif spec.int8:
            codes, e, guard = device.q_fit(y, bits)  # int8 codes, 0-dim exponent, NaN guard
            a = device.decode(codes, e, y.dtype) + guard.to(y.dtype)
        else:
            a = device.q_direct(y, bits)
        a = a.detach() if a._is_view() else a  # a tensor of its own: callers may modify it in place
        if codes is not None and bits is not None and kind.nonneg:  # (codes: bits is set)
            attach_codes(a, codes, e, guard, bits)
        if obs is not None and bits is not None:
            obs("A", y.detach(), a.detach(), spec.a_kind, bits)
        ctx.save_for_backward(y if kind.saves_output else x)
        ctx.kind, ctx.spec, ctx.obs = kind, spec, obs
        return a

    @staticmethod
    def backward(ctx, g):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (saved,) = ctx.saved_tensors
        kind, spec = ctx.kind, ctx.spec
        e1 = g
        if spec.error1 is not None:
            e1 = device.q_shift(g, spec.error1, spec.int8)[0]
            if ctx.obs is not None:
                ctx.obs("E1", g.detach(), e1, "SQ", spec.error1, narrow_range=spec.int8)
        dx = kind.derivative(e1, saved, saved)
        return dx, None, None, None


class QuantActivation(QuantModule, nn.Module):
    """Base of the quantized activation modules: ``a = A(f(x))``, backward ``f'(x)·E1(dL/da)``.

    Each subclass also derives from its ``torch.nn`` class (``isinstance(QuantGELU(), nn.GELU)``)
    and lists the constructor arguments it carries over in ``ARGS``."""

    FLOAT: ClassVar[type[nn.Module]]
    ARGS: ClassVar[tuple[str, ...]] = ()
    kind: ActivationKind  # a class constant, or a property reading the module's arguments

    def __init__(self, *args: Any, config: WAGEUBNConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = _check_config(config or WAGEUBNConfig())

    @classmethod
    def from_float(cls, mod: nn.Module, config: WAGEUBNConfig) -> QuantActivation:
        return cls(**{a: getattr(mod, a) for a in cls.ARGS}, config=config)

    def to_float(self) -> nn.Module:
        return self.FLOAT(**{a: getattr(self, a) for a in self.ARGS})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.activation is None and cfg.error1 is None:
            return self.FLOAT.forward(self, x)  # torch.nn's own forward (in place if asked)
        return quant_activation(x, self.kind, cfg, self)

    def extra_repr(self) -> str:
        own = super().extra_repr()
        quant = f"A={self.config.activation}, E1={self.config.error1}"
        return f"{own}, {quant}" if own else quant


class QuantReLU6(QuantActivation, nn.ReLU6):
    """``a = A(min(max(x, 0), 6))``; ``f'`` is the mask ``0 < x < 6``. Non-negative: int8 codes
    attached."""

    FLOAT = nn.ReLU6
    ARGS = ("inplace",)
    kind = ActivationKind("relu6")


class QuantLeakyReLU(QuantActivation, nn.LeakyReLU):
    """``a = A(x if x > 0 else slope·x)``; ``f'`` is 1 or ``negative_slope`` (float)."""

    FLOAT = nn.LeakyReLU
    ARGS = ("negative_slope", "inplace")

    @property
    def kind(self) -> ActivationKind:  # type: ignore[override]  # per instance: the slope
        return ActivationKind("leaky_relu", slope=float(self.negative_slope))


class QuantHardswish(QuantActivation, nn.Hardswish):
    """``a = A(x·relu6(x + 3)/6)``; ``f'`` = 0, ``(2x + 3)/6`` or 1 by region, in float."""

    FLOAT = nn.Hardswish
    ARGS = ("inplace",)
    kind = ActivationKind("hardswish")


class QuantHardsigmoid(QuantActivation, nn.Hardsigmoid):
    """``a = A(relu6(x + 3)/6)``; ``f'`` = 1/6 on ``(−3, 3)``, else 0. Non-negative: int8 codes
    attached."""

    FLOAT = nn.Hardsigmoid
    ARGS = ("inplace",)
    kind = ActivationKind("hardsigmoid")


class QuantSiLU(QuantActivation, nn.SiLU):
    """``a = A(x·σ(x))``; ``f' = σ(x)(1 + x(1 − σ(x)))`` in float."""

    FLOAT = nn.SiLU
    ARGS = ("inplace",)
    kind = ActivationKind("silu")


class QuantGELU(QuantActivation, nn.GELU):
    """``a = A(gelu(x))`` (exact erf form, or ``approximate="tanh"``); ``f'`` in float."""

    FLOAT = nn.GELU
    ARGS = ("approximate",)

    @property
    def kind(self) -> ActivationKind:  # type: ignore[override]  # per instance: the approximation
        return ActivationKind("gelu", approximate=self.approximate)


class QuantSigmoid(QuantActivation, nn.Sigmoid):
    """``a = A(σ(x))``; ``f' = y(1 − y)`` with the float ``y = σ(x)``. Non-negative: int8 codes
    attached."""

    FLOAT = nn.Sigmoid
    kind = ActivationKind("sigmoid")


class QuantTanh(QuantActivation, nn.Tanh):
    """``a = A(tanh(x))``; ``f' = 1 − y²`` with the float ``y = tanh(x)``."""

    FLOAT = nn.Tanh
    kind = ActivationKind("tanh")


QUANT_ACTIVATIONS: dict[type[nn.Module], type[QuantActivation]] = {
    cls.FLOAT: cls
    for cls in (
        QuantReLU6,
        QuantLeakyReLU,
        QuantHardswish,
        QuantHardsigmoid,
        QuantSiLU,
        QuantGELU,
        QuantSigmoid,
        QuantTanh,
    )
}
"""``torch.nn`` activation class → its quantized module."""
