"""The quantization points of a layer, built from a ``WAGEUBNConfig``.

Each function applies one role's quantizer in the direction the contract puts it (docs/WAGEUBN.md
§2) and is the identity for a role set to ``None``:

* forward, gradient straight through: ``weight`` (QC), ``activation`` (Q), the BN quantities (Q);
* backward only: ``error1`` (SQ) on the gradient arriving at a quantized activation, ``error2`` (FQ)
  on the gradient of a quantized conv/linear output.

They run the sync-free kernels of ``wageubn.quant.device``: no value is read back to the host,
and NaN/Inf propagate (``QSGD`` checks once per step). ``observer`` (from
``wageubn.core.observe.tap``) is ``None`` unless diagnostics are recording.
"""

from __future__ import annotations

import torch

from ..config import WAGEUBNConfig
from ..core.observe import Observer, observed
from ..quant import device, quantize_backward, quantize_forward

__all__ = ["activation_q", "error1", "error2", "forward_q", "weight_q"]


class _Q:
    """``Q(x, k)`` as a callable (a class, not a closure: ``torch.compile`` traces it as a constant)."""

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return device.q_direct(x, self.bits)


class _QC(_Q):
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return device.q_clipped(x, self.bits)


class _Fit(_Q):
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        codes, e, guard = device.q_fit(x, self.bits)
        return device.decode(codes, e, x.dtype) + guard.to(x.dtype)


class _SQ(_Q):
    def __init__(self, bits: int, narrow_range: bool) -> None:
        super().__init__(bits)
        self.narrow_range = narrow_range

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return device.q_shift(x, self.bits, self.narrow_range)[0]


class _FQ(_Q):
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return device.q_flag(x, self.bits)[0]


def forward_q(
    x: torch.Tensor, bits: int | None, observer: Observer | None = None, role: str = ""
) -> torch.Tensor:
    """``Q(x, bits)`` forward, straight-through backward; identity for ``bits=None``."""
    if bits is None:
        return x
    return quantize_forward(x, observed(_Q(bits), observer, role, "Q", bits))


def activation_q(
    x: torch.Tensor, config: WAGEUBNConfig, observer: Observer | None = None
) -> torch.Tensor:
    """A: ``Q(x, k_A)``, or in ``int8`` arithmetic ``fit_quantize`` (codes fit k bits, §6);
    straight-through backward."""
    bits = config.activation
    if bits is None:
        return x
    int8 = config.arithmetic == "int8"
    fn = _Fit(bits) if int8 else _Q(bits)
    return quantize_forward(x, observed(fn, observer, "A", "fit" if int8 else "Q", bits))


def weight_q(
    w: torch.Tensor, config: WAGEUBNConfig, observer: Observer | None = None
) -> torch.Tensor:
    """W: ``QC(w, k_W)`` forward, straight-through backward."""
    bits = config.weight
    if bits is None:
        return w
    return quantize_forward(w, observed(_QC(bits), observer, "W", "QC", bits))


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
    fn = observed(_SQ(bits, narrow), observer, "E1", "SQ", bits, narrow_range=narrow)
    return quantize_backward(a, fn)


def error2(
    z: torch.Tensor, config: WAGEUBNConfig, observer: Observer | None = None
) -> torch.Tensor:
    """E2: identity forward; ``dL/dz`` becomes ``FQ(dL/dz, k_E2)``."""
    bits = config.error2
    if bits is None:
        return z
    return quantize_backward(z, observed(_FQ(bits), observer, "E2", "FQ", bits))
