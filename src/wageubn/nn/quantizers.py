"""The quantization points of a layer, built from a ``WAGEUBNConfig``.

Each function applies one role's quantizer in the direction the contract puts it (docs/WAGEUBN.md
§2) and is the identity for a role set to ``None``:

* forward, gradient straight through: ``weight`` (QC), ``activation`` (Q), the BN quantities (Q);
* backward only: ``error1`` (SQ) on the gradient arriving at a quantized activation, ``error2`` (FQ)
  on the gradient of a quantized conv/linear output.

``observer`` (from ``wageubn.nn.observe.tap``) is ``None`` unless diagnostics are recording.
"""

from __future__ import annotations

import functools

import torch

from ..config import WAGEUBNConfig
from ..quant import (
    clipped_direct_quantize,
    direct_quantize,
    fit_quantize,
    flag_quantize,
    quantize_backward,
    quantize_forward,
    shift_quantize,
)
from .observe import Observer, observed

__all__ = [
    "ROLE_TAG",
    "activation_q",
    "error1",
    "error2",
    "forward_q",
    "tag_parameter",
    "weight_q",
]

# Parameters of quantized layers carry their role for QSGD: "weight" (CQ gradient) or "bn" (Q gradient).
ROLE_TAG = "_wageubn_role"


def tag_parameter(p: torch.nn.Parameter | None, role: str | None) -> None:
    """Mark (or, with ``role=None``, unmark) a parameter's WAGEUBN role for the optimizer."""
    if p is None:
        return
    if role is None:
        p.__dict__.pop(ROLE_TAG, None)
    else:
        setattr(p, ROLE_TAG, role)


def forward_q(
    x: torch.Tensor, bits: int | None, observer: Observer | None = None, role: str = ""
) -> torch.Tensor:
    """``Q(x, bits)`` forward, straight-through backward; identity for ``bits=None``."""
    if bits is None:
        return x
    fn = observed(functools.partial(direct_quantize, bits=bits), observer, role, "Q", bits)
    return quantize_forward(x, fn)


def activation_q(
    x: torch.Tensor, config: WAGEUBNConfig, observer: Observer | None = None
) -> torch.Tensor:
    """A: ``Q(x, k_A)``, or in ``int8`` arithmetic ``fit_quantize`` (codes fit k bits, §6);
    straight-through backward."""
    bits = config.activation
    if bits is None:
        return x
    int8 = config.arithmetic == "int8"
    fn = functools.partial(fit_quantize if int8 else direct_quantize, bits=bits)
    return quantize_forward(x, observed(fn, observer, "A", "fit" if int8 else "Q", bits))


def weight_q(
    w: torch.Tensor, config: WAGEUBNConfig, observer: Observer | None = None
) -> torch.Tensor:
    """W: ``QC(w, k_W)`` forward, straight-through backward."""
    bits = config.weight
    if bits is None:
        return w
    fn = functools.partial(clipped_direct_quantize, bits=bits)
    return quantize_forward(w, observed(fn, observer, "W", "QC", bits))


def error1(
    a: torch.Tensor, config: WAGEUBNConfig, observer: Observer | None = None
) -> torch.Tensor:
    """E1: identity forward; the summed gradient ``dL/da`` becomes ``SQ(dL/da, k_E1)``.

    In ``int8`` arithmetic the clip is ±(1 − 2^(1−k)) so the codes fit int8 (§6).
    """
    bits = config.error1
    if bits is None:
        return a
    narrow = config.arithmetic == "int8"
    fn = functools.partial(shift_quantize, bits=bits, narrow_range=narrow)
    return quantize_backward(a, observed(fn, observer, "E1", "SQ", bits, narrow_range=narrow))


def error2(
    z: torch.Tensor, config: WAGEUBNConfig, observer: Observer | None = None
) -> torch.Tensor:
    """E2: identity forward; ``dL/dz`` becomes ``FQ(dL/dz, k_E2)``."""
    bits = config.error2
    if bits is None:
        return z
    fn = functools.partial(flag_quantize, bits=bits)
    return quantize_backward(z, observed(fn, observer, "E2", "FQ", bits))
