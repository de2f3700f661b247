"""Exact integer products for linear and conv2d, all three directions (docs/kernels.md).

Inputs are integer codes: int8 (weights, errors, signed activations) or uint8 (non-negative
activations). Every function returns the EXACT integer sum of products, as if accumulated in
int64 (docs/WAGEUBN.md §6):

* ``out_exponent=None``: an integer tensor holding the accumulator, int32 when the bound
  ``K · max|a| · max|b| <= 2^31 − 1`` holds for the dtypes (255 for uint8, 128 for int8), else
  int64 (:func:`accumulator_dtype`); ``K`` is the number of products per output element.
* ``out_exponent=e``: float32 ``acc · 2^e`` rounded once from the exact integer, bit-equal to
  ``(acc_int64.double() * 2.0**e).float()``.

Backends: ``"reference"`` (int64 loops, the oracle, always present), ``"cpu"`` (oneDNN u8s8
convolutions and ``torch._int_mm``), ``"cuda"`` (``torch._int_mm`` on im2col). ``"auto"`` picks
by device and can be pinned with :func:`set_default_backend`. Each backend is a
``KernelBackend`` object (``kernels/backend.py``, :func:`get_backend`) with one typed interface;
the functions here check their arguments, choose the backend and call it. Importing this package
compiles and probes nothing; the CPU backend checks its kernels' exactness on first use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .backend import (
    BACKENDS,
    ConvGeometry,
    KernelBackend,
    OutputSpec,
    check_backend_name,
    get_backend,
)
from .checks import (
    check_bound,
    check_codes,
    check_conv_shapes,
    check_exponent,
    conv_geometry,
    full_size,
    same_device,
)
from .reference import Exponent, accumulator_dtype

__all__ = [
    "ConvGeometry",
    "KernelBackend",
    "OutputSpec",
    "accumulator_dtype",
    "available_backends",
    "conv2d_forward",
    "conv2d_input_grad",
    "conv2d_input_grad_planes",
    "conv2d_weight_grad",
    "get_backend",
    "get_default_backend",
    "linear_forward",
    "linear_input_grad",
    "linear_weight_grad",
    "set_default_backend",
]

_default_backend = "auto"

IntPair = int | Sequence[int]


# -------------------------------------------------------------------------------------- backends


def available_backends() -> list[str]:
    """Backends that work in this process: always ``"reference"``; ``"cpu"`` where its integer
    kernels pass the exactness probe; ``"cuda"`` where CUDA is available."""
    return [name for name in BACKENDS if name == "reference" or get_backend(name).is_available()]


def set_default_backend(name: str) -> None:
    """Make ``name`` (``"auto"`` or a backend) what ``backend="auto"`` resolves to."""
    global _default_backend
    check_backend_name(name, allow_auto=True)
    _default_backend = name


def get_default_backend() -> str:
    """The name set by :func:`set_default_backend` (``"auto"`` unless changed)."""
    return _default_backend


def _resolve(backend: str, device: torch.device) -> KernelBackend:
    """The backend object that runs a call on ``device`` (``"auto"``: the default, else by
    device, the reference where the device's backend is unavailable)."""
    check_backend_name(backend, allow_auto=True)
    name = _default_backend if backend == "auto" else backend
    if name == "auto":
        name = "cuda" if device.type == "cuda" else "cpu"
        if not get_backend(name).is_available():
            name = "reference"
    impl = get_backend(name)
    if name != "reference" and not impl.is_available():
        raise ValueError(
            f"backend {name!r} is not available here (available: {available_backends()}); "
            "pass backend='reference' or 'auto'"
        )
    if name == "cpu" and device.type != "cpu":
        raise ValueError(
            f"backend 'cpu' got tensors on {device}; move them to the CPU or use backend='auto'"
        )
    if name == "cuda" and device.type != "cuda":
        raise ValueError(
            f"backend 'cuda' got tensors on {device}; move them to CUDA or use backend='auto'"
        )
    return impl


# ------------------------------------------------------------------------------------------ linear


def linear_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    backend: str = "auto",
    out_exponent: Exponent | None = None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """(M, K) int8/uint8 x, (N, K) int8 w → (M, N) = x @ wᵀ, exact (int32/int64 or scaled float32)."""
    fn = "linear_forward"
    check_codes(fn, "x", x, 2, True)
    check_codes(fn, "w", w, 2, False)
    check_exponent(fn, out_exponent, out_guard)
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"{fn}: x is {tuple(x.shape)} and w is {tuple(w.shape)}; need "
            "x.shape[1] == w.shape[1] (w is (out_features, in_features))"
        )
    out_dtype = check_bound(fn, x.shape[1], x, w)
    out = OutputSpec(out_dtype, out_exponent, out_guard)
    return _resolve(backend, same_device(fn, x, w)).linear_forward(x, w, out=out)


def linear_input_grad(
    e: torch.Tensor,
    w: torch.Tensor,
    *,
    backend: str = "auto",
    out_exponent: Exponent | None = None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """(M, N) int8 e, (N, K) int8 w → (M, K) = e @ w, exact."""
    fn = "linear_input_grad"
    check_codes(fn, "e", e, 2, False)
    check_codes(fn, "w", w, 2, False)
    check_exponent(fn, out_exponent, out_guard)
    if e.shape[1] != w.shape[0]:
        raise ValueError(
            f"{fn}: e is {tuple(e.shape)} and w is {tuple(w.shape)}; need e.shape[1] == w.shape[0]"
        )
    out_dtype = check_bound(fn, e.shape[1], e, w)
    out = OutputSpec(out_dtype, out_exponent, out_guard)
    return _resolve(backend, same_device(fn, e, w)).linear_input_grad(e, w, out=out)


def linear_weight_grad(
    e: torch.Tensor,
    x: torch.Tensor,
    *,
    backend: str = "auto",
    out_exponent: Exponent | None = None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """(M, N) int8 e, (M, K) int8/uint8 x → (N, K) = eᵀ @ x, exact (K-chunked, int64 if needed)."""
    fn = "linear_weight_grad"
    check_codes(fn, "e", e, 2, False)
    check_codes(fn, "x", x, 2, True)
    check_exponent(fn, out_exponent, out_guard)
    if e.shape[0] != x.shape[0]:
        raise ValueError(
            f"{fn}: e is {tuple(e.shape)} and x is {tuple(x.shape)}; need the "
            "same number of rows (batch)"
        )
    out_dtype = check_bound(fn, e.shape[0], e, x)
    out = OutputSpec(out_dtype, out_exponent, out_guard)
    return _resolve(backend, same_device(fn, e, x)).linear_weight_grad(e, x, out=out)


# -------------------------------------------------------------------------------------------- conv


def conv2d_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    backend: str = "auto",
    out_exponent: Exponent | None = None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, C, H, W) int8/uint8 x, (O, C/g, kh, kw) int8 w → (N, O, Ho, Wo), as ``F.conv2d``.

    Exact; ``K = C/g · kh · kw``. The CPU result is channels_last.
    """
    fn = "conv2d_forward"
    check_codes(fn, "x", x, 4, True)
    check_codes(fn, "w", w, 4, False)
    check_exponent(fn, out_exponent, out_guard)
    geometry = conv_geometry(fn, stride, padding, dilation, groups)
    check_conv_shapes(fn, x.shape[1], tuple(w.shape), x.shape[2], x.shape[3], geometry)
    out_dtype = check_bound(fn, w.shape[1] * w.shape[2] * w.shape[3], x, w)
    impl = _resolve(backend, same_device(fn, x, w))
    out = OutputSpec(out_dtype, out_exponent, out_guard)
    return impl.conv2d_forward(x, w, geometry=geometry, out=out)


def conv2d_input_grad(
    e: torch.Tensor,
    w: torch.Tensor,
    input_size: Sequence[int],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    backend: str = "auto",
    out_exponent: Exponent | None = None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, O, Ho, Wo) int8 e, (O, C/g, kh, kw) int8 w → (N, C, H, W), as
    ``torch.nn.grad.conv2d_input``. Exact; ``K = O/g · kh · kw``. The CPU result is channels_last.
    """
    fn = "conv2d_input_grad"
    size, geometry, out_dtype = _input_grad_args(
        fn, e, w, input_size, e.shape[0], stride, padding, dilation, groups
    )
    check_exponent(fn, out_exponent, out_guard)
    impl = _resolve(backend, same_device(fn, e, w))
    out = OutputSpec(out_dtype, out_exponent, out_guard)
    return impl.conv2d_input_grad(e, w, input_size=size, geometry=geometry, out=out)


def conv2d_input_grad_planes(
    both: torch.Tensor,
    w: torch.Tensor,
    input_size: Sequence[int],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    shift: int,
    out_exponent: Exponent,
    out_guard: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The input gradient of an error held as two int8 planes stacked along the batch.

    ``both`` is (2N, O, Ho, Wo): N images of coarse codes, then the same N of fine codes (E2 of
    the ``int8`` mode, docs/WAGEUBN.md §6). Returns float32 (N, C, H, W)
    ``(2^shift · P(coarse) + P(fine)) · 2^out_exponent`` rounded once, ``P`` the exact
    ``conv2d_input_grad``; ``input_size`` is the N-image input's. The CPU backend adds the two
    planes inside the oneDNN convolution (a sum post-op) where float32 holds each accumulator.
    """
    fn = "conv2d_input_grad_planes"
    if not isinstance(shift, int) or isinstance(shift, bool) or not 0 <= shift <= 30:
        raise ValueError(f"{fn}: shift must be an int in [0, 30], got {shift!r}")
    if out_exponent is None:
        raise ValueError(f"{fn}: out_exponent is required (the result is float32)")
    if both.dim() == 4 and both.shape[0] % 2:
        raise ValueError(f"{fn}: both holds two planes of N images each; got a batch of "
                         f"{both.shape[0]}")  # fmt: skip
    size, geometry, out_dtype = _input_grad_args(
        fn, both, w, input_size, both.shape[0] // 2, stride, padding, dilation, groups
    )
    check_exponent(fn, out_exponent, out_guard)
    impl = _resolve(backend, same_device(fn, both, w))
    out = OutputSpec(out_dtype, out_exponent, out_guard)
    return impl.conv2d_input_grad_planes(
        both, w, input_size=size, geometry=geometry, shift=shift, out=out
    )


def _input_grad_args(fn, e, w, input_size, n, stride, padding, dilation, groups):
    """The checked input size (batch ``n``), geometry and accumulator dtype of an input grad."""
    check_codes(fn, "e", e, 4, False)
    check_codes(fn, "w", w, 4, False)
    geometry = conv_geometry(fn, stride, padding, dilation, groups)
    size = full_size(fn, "input_size", input_size, n, w.shape[1] * geometry.groups)
    ho, wo = check_conv_shapes(fn, size[1], tuple(w.shape), size[2], size[3], geometry)
    if (e.shape[1], e.shape[2], e.shape[3]) != (w.shape[0], ho, wo):
        raise ValueError(
            f"{fn}: e has shape {tuple(e.shape)} but a conv of input {size} with "
            f"weight {tuple(w.shape)} gives ({size[0]}, {w.shape[0]}, {ho}, {wo})"
        )
    out_dtype = check_bound(fn, (w.shape[0] // geometry.groups) * w.shape[2] * w.shape[3], e, w)
    return size, geometry, out_dtype


def conv2d_weight_grad(
    x: torch.Tensor,
    e: torch.Tensor,
    weight_size: Sequence[int],
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    backend: str = "auto",
    out_exponent: Exponent | None = None,
    out_guard: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, C, H, W) int8/uint8 x, (N, O, Ho, Wo) int8 e → (O, C/g, kh, kw), as
    ``torch.nn.grad.conv2d_weight``. Exact; ``K = N · Ho · Wo`` (chunked, int64 when needed).
    """
    fn = "conv2d_weight_grad"
    check_codes(fn, "x", x, 4, True)
    check_codes(fn, "e", e, 4, False)
    check_exponent(fn, out_exponent, out_guard)
    geometry = conv_geometry(fn, stride, padding, dilation, groups)
    if (
        not isinstance(weight_size, Sequence)
        or len(weight_size) != 4
        or not all(isinstance(s, int) and s > 0 for s in weight_size)
    ):
        raise ValueError(f"{fn}: weight_size must be (O, C/groups, kh, kw), got {weight_size!r}")
    size = (weight_size[0], weight_size[1], weight_size[2], weight_size[3])
    ho, wo = check_conv_shapes(fn, x.shape[1], size, x.shape[2], x.shape[3], geometry)
    if tuple(e.shape) != (x.shape[0], size[0], ho, wo):
        raise ValueError(
            f"{fn}: e has shape {tuple(e.shape)}, expected "
            f"({x.shape[0]}, {size[0]}, {ho}, {wo}) for x {tuple(x.shape)} "
            f"and weight {size}"
        )
    out_dtype = check_bound(fn, e.shape[0] * ho * wo, x, e)
    impl = _resolve(backend, same_device(fn, x, e))
    out = OutputSpec(out_dtype, out_exponent, out_guard)
    return impl.conv2d_weight_grad(x, e, weight_size=size, geometry=geometry, out=out)
