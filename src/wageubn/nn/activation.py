"""What the quantized activation point needs, shared by ``QuantReLU`` and a BN fused with it.

* ``ActivationSpec`` — the A and E1 settings of a config, as one hashable value;
* ``Layout`` — a dense tensor's elements in memory order (``flat``) and back (``unflat``), and a
  gradient brought to the same layout (``match``), so that kernels run on 1-D views;
* ``ActivationCodes`` — the int8 codes of an ``int8``-mode activation, handed from the activation
  to the conv/linear that consumes it (``attach_codes`` / ``codes_of``), so the product does not
  re-derive them; valid only while the tensor is unmodified (its ``_version``);
* ``mark_activated`` / ``activated_by`` — a BN that ``quantize_`` fused with the ReLU after it
  returns the activation itself and marks it, so that ReLU passes it through.

Nothing here is used inside ``torch.compile`` of a user's model (``torch.compiler.is_compiling()``):
there the layers run unfused and the compiler fuses across them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..config import WAGEUBNConfig
from ..quant import device

__all__ = [
    "ActivationCodes",
    "ActivationSpec",
    "Layout",
    "activated_by",
    "attach_codes",
    "codes_of",
    "mark_activated",
]


@dataclass(frozen=True)
class ActivationSpec:
    """A (``activation`` bits) and E1 (``error1`` bits) of one activation point."""

    activation: int | None
    error1: int | None
    int8: bool

    @classmethod
    def of(cls, config: WAGEUBNConfig) -> ActivationSpec:
        return cls(config.activation, config.error1, config.arithmetic == "int8")

    @property
    def e1_limit(self) -> float:
        """The E1 code limit: ``2^(k−1)`` (the paper's clip at ±1) or ``2^(k−1) − 1`` (int8)."""
        if self.error1 is None:
            return 0.0
        levels = 2.0 ** (self.error1 - 1)
        return levels - 1 if self.int8 else levels

    @property
    def a_kind(self) -> str:
        return "fit" if self.int8 else "Q"


@dataclass(frozen=True)
class Layout:
    """Shape and strides of the dense tensor a kernel worked on (``flat`` copies non-dense input)."""

    shape: torch.Size
    stride: tuple[int, ...]

    @classmethod
    def of(cls, x: torch.Tensor) -> Layout:
        if device.is_dense(x):
            return cls(x.shape, x.stride())
        return cls(x.shape, torch.empty(x.shape, device="meta").stride())

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        return device.flat(self.match(x))

    def unflat(self, y: torch.Tensor) -> torch.Tensor:
        """A kernel's 1-D output in this layout (a tensor of its own, not a view, for autograd)."""
        return y.as_strided(self.shape, self.stride).detach()

    def match(self, g: torch.Tensor) -> torch.Tensor:
        """``g`` in this layout (a copy only when its strides differ)."""
        if g.stride() == self.stride or g.numel() <= 1:
            return g
        return torch.empty_strided(self.shape, self.stride, dtype=g.dtype, device=g.device).copy_(g)


class ActivationCodes(NamedTuple):
    """``a = codes · 2^exponent`` (+ ``guard``: 0, or NaN when ``a`` came from non-finite input)."""

    codes: torch.Tensor  # int8, a's layout
    exponent: torch.Tensor  # 0-dim int64, on a's device
    guard: torch.Tensor  # 0-dim float
    bits: int
    version: int
    nonneg: bool  # known non-negative (a ReLU's output): the products may read them as uint8
    # Rebuilds ``codes`` from what the producer keeps for its own backward anyway (a fused BN's x̂
    # codes): a consumer may keep this instead of the codes (int8 mode: 1 byte an element less).
    regenerate: Callable[[], torch.Tensor] | None = None


_CODES = "_wageubn_codes"
_ACTIVATED = "_wageubn_activated"


def attach_codes(
    a: torch.Tensor,
    codes: torch.Tensor,
    exponent: torch.Tensor,
    guard: torch.Tensor,
    bits: int,
    regenerate: Callable[[], torch.Tensor] | None = None,
) -> None:
    """Remember the (non-negative) int8 codes of an activation ``a`` for the conv/linear that
    consumes it (and, optionally, how to rebuild them later without keeping them)."""
    if not torch.compiler.is_compiling():
        codes_info = ActivationCodes(codes, exponent, guard, bits, a._version, True, regenerate)
        setattr(a, _CODES, codes_info)


def codes_of(x: torch.Tensor, bits: int) -> ActivationCodes | None:
    """The codes attached to ``x`` if they are still valid for ``bits``-bit A, else None."""
    if torch.compiler.is_compiling():
        return None
    cached = getattr(x, _CODES, None)
    if cached is None or cached.bits != bits or cached.version != x._version:
        return None
    return cached


def mark_activated(a: torch.Tensor, relu: torch.nn.Module) -> None:
    """``a`` is already ``relu``'s output (a BN fused with ``relu`` computed it)."""
    setattr(a, _ACTIVATED, (relu, a._version))


def activated_by(x: torch.Tensor) -> torch.nn.Module | None:
    """The fused ReLU whose output ``x`` is (and that must pass it through), if any."""
    if torch.compiler.is_compiling():
        return None
    marked = getattr(x, _ACTIVATED, None)
    if marked is None or marked[1] != x._version:
        return None
    return marked[0]
