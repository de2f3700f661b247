"""The kernel backends as objects with one typed interface, and the choice of one per call.

A backend (``KernelBackend``) computes the six exact integer products of ``wageubn.kernels`` on
arguments the public entry points have already checked: the codes, the conv geometry as one
``ConvGeometry`` (stride, padding and dilation as pairs, groups) and the output as one
``OutputSpec`` (the accumulator's integer dtype, the exponent of a float32 output, the NaN
guard)::

    backend = get_backend("cpu")
    backend.conv2d_forward(x, w, geometry=ConvGeometry((1, 1), (1, 1), (1, 1), 1),
                           out=OutputSpec(torch.int32, exponent=None))

The three backends are ``"reference"`` (``kernels/reference.py``: int64 loops, the oracle),
``"cpu"`` (``kernels/cpu.py``: oneDNN and ``torch._int_mm``) and ``"cuda"`` (``kernels/cuda.py``:
``torch._int_mm`` on im2col). Their kernels stay plain functions of those modules — the oneDNN
probe and the GEMM forms call them by position — and ``ModuleBackend`` adapts a module to the
interface; ``KernelModule`` is what such a module provides (mypy checks each module against it).
The module is imported on first use (importing ``wageubn.kernels`` compiles and probes nothing)
and its functions are looked up at each call.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch

from .reference import FLOAT_EXACT, Exponent, Pair, accumulator_bound, scale_exact

__all__ = [
    "BACKENDS",
    "ConvGeometry",
    "KernelBackend",
    "KernelModule",
    "ModuleBackend",
    "OutputSpec",
    "check_backend_name",
    "get_backend",
]

BACKENDS = ("reference", "cpu", "cuda")

Size4 = tuple[int, int, int, int]


class ConvGeometry(NamedTuple):
    """A checked conv2d geometry: ``stride``, ``padding`` and ``dilation`` as (h, w) pairs."""

    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int


class OutputSpec(NamedTuple):
    """What a product returns: the exact accumulator as ``dtype`` (int32 or int64) when
    ``exponent`` is None, else float32 ``acc · 2^exponent`` plus ``guard`` (0 or NaN) in the
    scale."""

    dtype: torch.dtype
    exponent: Exponent | None
    guard: torch.Tensor | None = None


class KernelBackend(ABC):
    """One implementation of the exact integer products (docs/kernels.md for the contract).

    Every method returns the exact integer sum of products of its codes as ``out`` says; shapes,
    dtypes and the geometry were checked by the ``wageubn.kernels`` entry point that calls it."""

    name: str

    @abstractmethod
    def is_available(self) -> bool:
        """Whether this backend works in this process."""

    @abstractmethod
    def linear_forward(self, x: torch.Tensor, w: torch.Tensor, *, out: OutputSpec) -> torch.Tensor:
        """(M, K) x, (N, K) w → (M, N) = x @ wᵀ."""

    @abstractmethod
    def linear_input_grad(
        self, e: torch.Tensor, w: torch.Tensor, *, out: OutputSpec
    ) -> torch.Tensor:
        """(M, N) e, (N, K) w → (M, K) = e @ w."""

    @abstractmethod
    def linear_weight_grad(
        self, e: torch.Tensor, x: torch.Tensor, *, out: OutputSpec
    ) -> torch.Tensor:
        """(M, N) e, (M, K) x → (N, K) = eᵀ @ x."""

    @abstractmethod
    def conv2d_forward(
        self, x: torch.Tensor, w: torch.Tensor, *, geometry: ConvGeometry, out: OutputSpec
    ) -> torch.Tensor:
        """(N, C, H, W) x, (O, C/g, kh, kw) w → (N, O, Ho, Wo), as ``F.conv2d``."""

    @abstractmethod
    def conv2d_input_grad(
        self,
        e: torch.Tensor,
        w: torch.Tensor,
        *,
        input_size: Size4,
        geometry: ConvGeometry,
        out: OutputSpec,
    ) -> torch.Tensor:
        """(N, O, Ho, Wo) e, (O, C/g, kh, kw) w → ``input_size`` (N, C, H, W)."""

    @abstractmethod
    def conv2d_weight_grad(
        self,
        x: torch.Tensor,
        e: torch.Tensor,
        *,
        weight_size: Size4,
        geometry: ConvGeometry,
        out: OutputSpec,
    ) -> torch.Tensor:
        """(N, C, H, W) x, (N, O, Ho, Wo) e → ``weight_size`` (O, C/g, kh, kw)."""

    def conv2d_input_grad_planes(
        self,
        both: torch.Tensor,
        w: torch.Tensor,
        *,
        input_size: Size4,
        geometry: ConvGeometry,
        shift: int,
        out: OutputSpec,
    ) -> torch.Tensor:
        """(2N, O, Ho, Wo) coarse-then-fine planes → float32 ``input_size`` (N, C, H, W)
        ``(2^shift · P(coarse) + P(fine)) · 2^exponent``, rounded once (``P``: the input grad).

        Here from ``conv2d_input_grad`` on both planes at once: where float32 holds every
        accumulator (``K · max|e| · max|w| <= 2^24``) each half is exact in float32 and one float32
        addition rounds their sum once; otherwise the exact integer accumulators are combined in
        float64 (exact below 2^53) and rounded once."""
        n = both.shape[0] // 2
        size2 = (2 * n, input_size[1], input_size[2], input_size[3])
        terms = (w.shape[0] // geometry.groups) * w.shape[2] * w.shape[3]
        assert out.exponent is not None
        if accumulator_bound(terms, both.dtype, w.dtype) <= FLOAT_EXACT:
            y = self.conv2d_input_grad(both, w, input_size=size2, geometry=geometry, out=out)
            return torch.add(y[n:], y[:n], alpha=float(2**shift))
        acc = self.conv2d_input_grad(
            both, w, input_size=size2, geometry=geometry, out=OutputSpec(out.dtype, None)
        ).to(torch.float64)
        return scale_exact(acc[:n] * float(2**shift) + acc[n:], out.exponent, out.guard)

    def __repr__(self) -> str:
        return f"<wageubn.kernels backend {self.name!r}>"


class KernelModule(Protocol):
    """The functions a backend module (``reference``, ``cpu``, ``cuda``) defines: the products
    with their positional geometry, as the modules call one another."""

    def is_available(self) -> bool: ...

    def linear_forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        *,
        out_dtype: torch.dtype,
        out_exponent: Exponent | None,
        out_guard: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def linear_input_grad(
        self,
        e: torch.Tensor,
        w: torch.Tensor,
        *,
        out_dtype: torch.dtype,
        out_exponent: Exponent | None,
        out_guard: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def linear_weight_grad(
        self,
        e: torch.Tensor,
        x: torch.Tensor,
        *,
        out_dtype: torch.dtype,
        out_exponent: Exponent | None,
        out_guard: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def conv2d_forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        stride: Pair,
        padding: Pair,
        dilation: Pair,
        groups: int,
        *,
        out_dtype: torch.dtype,
        out_exponent: Exponent | None,
        out_guard: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def conv2d_input_grad(
        self,
        e: torch.Tensor,
        w: torch.Tensor,
        input_size: Sequence[int],
        stride: Pair,
        padding: Pair,
        dilation: Pair,
        groups: int,
        *,
        out_dtype: torch.dtype,
        out_exponent: Exponent | None,
        out_guard: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def conv2d_weight_grad(
        self,
        x: torch.Tensor,
        e: torch.Tensor,
        weight_size: Sequence[int],
        stride: Pair,
        padding: Pair,
        dilation: Pair,
        groups: int,
        *,
        out_dtype: torch.dtype,
        out_exponent: Exponent | None,
        out_guard: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def _load(name: str) -> KernelModule:
    """The module of backend ``name``, imported on first use."""
    if name == "reference":
        from . import reference

        return reference
    if name == "cpu":
        from . import cpu

        return cpu
    from . import cuda

    return cuda


class ModuleBackend(KernelBackend):
    """A backend whose kernels are the functions of one module of this package."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def kernels(self) -> KernelModule:
        return _load(self.name)

    def is_available(self) -> bool:
        return self.kernels.is_available()

    def linear_forward(self, x: torch.Tensor, w: torch.Tensor, *, out: OutputSpec) -> torch.Tensor:
        return self.kernels.linear_forward(
            x, w, out_dtype=out.dtype, out_exponent=out.exponent, out_guard=out.guard
        )

    def linear_input_grad(
        self, e: torch.Tensor, w: torch.Tensor, *, out: OutputSpec
    ) -> torch.Tensor:
        return self.kernels.linear_input_grad(
            e, w, out_dtype=out.dtype, out_exponent=out.exponent, out_guard=out.guard
        )

    def linear_weight_grad(
        self, e: torch.Tensor, x: torch.Tensor, *, out: OutputSpec
    ) -> torch.Tensor:
        return self.kernels.linear_weight_grad(
            e, x, out_dtype=out.dtype, out_exponent=out.exponent, out_guard=out.guard
        )

    def conv2d_forward(
        self, x: torch.Tensor, w: torch.Tensor, *, geometry: ConvGeometry, out: OutputSpec
    ) -> torch.Tensor:
        return self.kernels.conv2d_forward(
            x, w, *geometry, out_dtype=out.dtype, out_exponent=out.exponent, out_guard=out.guard
        )

    def conv2d_input_grad(
        self,
        e: torch.Tensor,
        w: torch.Tensor,
        *,
        input_size: Size4,
        geometry: ConvGeometry,
        out: OutputSpec,
    ) -> torch.Tensor:
        return self.kernels.conv2d_input_grad(
            e, w, input_size, *geometry,
            out_dtype=out.dtype, out_exponent=out.exponent, out_guard=out.guard,
        )  # fmt: skip

    def conv2d_weight_grad(
        self,
        x: torch.Tensor,
        e: torch.Tensor,
        *,
        weight_size: Size4,
        geometry: ConvGeometry,
        out: OutputSpec,
    ) -> torch.Tensor:
        return self.kernels.conv2d_weight_grad(
            x, e, weight_size, *geometry,
            out_dtype=out.dtype, out_exponent=out.exponent, out_guard=out.guard,
        )  # fmt: skip

    def conv2d_input_grad_planes(
        self,
        both: torch.Tensor,
        w: torch.Tensor,
        *,
        input_size: Size4,
        geometry: ConvGeometry,
        shift: int,
        out: OutputSpec,
    ) -> torch.Tensor:
        fused = getattr(self.kernels, "conv2d_input_grad_planes", None)
        if fused is not None:  # a module's own form; None where it does not apply
            y = fused(both, w, input_size, *geometry, shift=shift, out_dtype=out.dtype,
                      out_exponent=out.exponent, out_guard=out.guard)  # fmt: skip
            if y is not None:
                return y
        return super().conv2d_input_grad_planes(
            both, w, input_size=input_size, geometry=geometry, shift=shift, out=out
        )


_INSTANCES: dict[str, KernelBackend] = {name: ModuleBackend(name) for name in BACKENDS}


def check_backend_name(name: object, *, allow_auto: bool) -> None:
    """``TypeError`` / ``ValueError`` (with a close match) unless ``name`` is a backend name (or
    ``"auto"`` where allowed)."""
    allowed = (("auto",) if allow_auto else ()) + BACKENDS
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, one of {allowed}; got {type(name).__name__}")
    if name not in allowed:
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown backend {name!r}: use one of {allowed}{hint}")


def get_backend(name: str) -> KernelBackend:
    """The backend object called ``name`` (``"reference"``, ``"cpu"`` or ``"cuda"``), whether or
    not it is available here (``is_available()`` says)."""
    check_backend_name(name, allow_auto=False)
    return _INSTANCES[name]
