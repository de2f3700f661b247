"""``int8`` arithmetic (docs/WAGEUBN.md §6): conv/linear products on integer codes, both directions.

Every operand of every product is ``code · 2^exponent`` with int8 codes and one integer exponent
per tensor:

* W: ``QC(W, k_W)`` → codes in ``[−(2^(k−1)−1), 2^(k−1)−1]``, exponent ``1 − k_W``;
* A (the layer input): ``fit_quantize`` → the smallest exponent ≥ ``1 − k_A`` whose codes hold
  ``max|a|`` without saturation (a no-op on the output of an ``int8`` ``QuantReLU``);
* E2 (the output gradient): ``FQ(dL/dz, k_E2)`` as two int8 planes that share ``s = R/2^(k−1)``,
  coarse codes (steps of ``s``) and fine codes (steps of ``s·2^(1−k)``), each element in exactly
  one; a product with E2 is two integer products combined exactly as ``2^(k−1)·coarse + fine``.

Forward, input gradient and weight gradient run on ``wageubn.kernels`` (integer accumulation,
exact), or, with ``int8_backend="float"``, as the float simulation of the same semantics (float32
products of the decoded values: bit-equal to the integer kernels wherever float32 is exact). The
tensors saved for backward are the int8 codes of A plus their exponent — a quarter of float32 —
and the parameter W itself, whose codes the backward rebuilds (one pass; no copy is kept). The
float result of a product is the exact integer accumulator times its power-of-two scale, rounded
once to float32. The weight gradient leaves the layer in float32 and the optimizer
applies ``CQ`` (with weight decay added first, §3); its ``R`` and codes equal those of the integer
accumulator except where float32 cannot hold that accumulator (``|acc| >= 2^24``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .. import kernels
from ..config import WAGEUBNConfig
from ..core.observe import tap
from ..quant import device, pow2_exponent
from ..quant.fusion import fused
from .activation import ActivationCodes, codes_of

__all__ = ["error2_planes", "int8_conv2d", "int8_linear"]

_TOP = 127  # every int8 code here lies in ±(2^(k−1) − 1) <= 127, for k <= 8


class Planes(NamedTuple):
    """E2 as two int8 planes: ``FQ = coarse·2^e + fine·2^(e−k+1)`` (``e``: 0-dim int64), stored as
    rows ``R × C`` (``N·H·W × C`` for a conv, channels_last) in two layouts: ``major``
    ``(2, R, C)`` (coarse rows, then fine rows) and ``side`` ``(R, 2, C)`` (each row's coarse and
    fine side by side)."""

    major: torch.Tensor
    side: torch.Tensor
    exponent: torch.Tensor
    guard: torch.Tensor  # 0, or NaN when the gradient was not finite
    shape: torch.Size  # the gradient's shape

    def _logical(self, plane: torch.Tensor) -> torch.Tensor:
        if len(self.shape) == 4:
            n, c, h, w = self.shape
            return plane.view(n, h, w, c).permute(0, 3, 1, 2)
        return plane.view(self.shape)

    @property
    def coarse(self) -> torch.Tensor:
        return self._logical(self.major[0])

    @property
    def fine(self) -> torch.Tensor:
        return self._logical(self.major[1])


def operand_codes(x: torch.Tensor, bits: int) -> ActivationCodes:
    """A: int8 codes of ``fit_quantize(x, k)`` with exponent and NaN guard — the codes an int8
    activation attached to ``x`` when it made it, else derived here (one fused kernel)."""
    cached = codes_of(x, bits)
    if cached is not None:
        return cached
    codes, e, guard = device.q_fit(x.detach(), bits)
    return ActivationCodes(codes, e, guard, bits, x._version, False, None)


def activation_codes(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A: int8 codes and exponent (a 0-dim tensor) of ``fit_quantize(x, k)``."""
    c = operand_codes(x, bits)
    return c.codes, c.exponent


def _as_input(a: ActivationCodes) -> torch.Tensor:
    """Non-negative int8 codes (0..127, a ReLU's output) viewed as uint8 — the same bytes, and the
    oneDNN forward's fastest input; codes of unknown sign stay int8 (known statically: no read)."""
    return a.codes.view(torch.uint8) if a.nonneg else a.codes


def weight_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """W: int8 codes of ``QC(w, k)`` and the exponent ``1 − k``."""
    q = device.q_clipped(w.detach(), bits)  # on the 2^(1−k) grid: the scaling is exact
    return (q * 2.0 ** (bits - 1)).to(torch.int8), 1 - bits


def planes_of(g: torch.Tensor, bits: int) -> Planes:
    """E2 = FQ(g, k) as int8 planes (one fused kernel, no host read)."""
    return Planes(*device.q_error2_rows(g.detach(), bits), g.shape)


def error2_planes(g: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """E2 = FQ(g, k) as ``(coarse, fine, e)``: int8 planes with ``FQ = coarse·2^e + fine·2^(e−k+1)``.

    ``e = r − (k − 1)`` (``s = 2^e``). A fine code that rounds up to ``2^(k−1)`` (the value ``s``) is
    stored as coarse code 1, so both planes fit ``±(2^(k−1) − 1)``. ``None`` for an all-zero ``g``.
    The standalone form (a host read for ``e``); the layers use ``planes_of``.
    """
    r = pow2_exponent(g, "error2 input")
    if r is None:
        return None
    p = planes_of(g, bits)
    return p.coarse, p.fine, r - (bits - 1)


def _two_plane_product(product, both: torch.Tensor, planes: Planes, k: int, bits: int, e_other):
    """``(2^(k−1)·P(coarse) + P(fine))·2^e`` rounded once to float32, for an integer product ``P``
    applied once to ``both`` planes stacked along the batch (coarse rows first).

    When the accumulators are bounded below 2^24 (``K · 127 · 127``, from the shapes), each
    converts to float32 exactly inside the kernel (``out_exponent``) and one float32 addition of
    ``2^(k−1)·coarse`` (exact) and ``fine`` is the single rounding of the exact sum; otherwise the
    exact integer accumulators are combined in float64. (Exact while the result is a normal
    float32.)
    """
    e_fine = planes.exponent - (bits - 1) + e_other
    half = both.shape[0] // 2
    if k * _TOP * _TOP < 2**24:
        out = product(both, e_fine, planes.guard)
        return torch.add(out[half:], out[:half], alpha=float(2 ** (bits - 1)))
    acc = product(both, None, None)
    return _combine(acc[:half], acc[half:], bits, e_fine, planes.guard)


@fused
def _combine(coarse_acc, fine_acc, bits: int, e: torch.Tensor, guard: torch.Tensor):
    """``(2^(k−1)·coarse + fine) · 2^e`` rounded once to float32 (float64 holds every sum
    exactly; every step before the last rounding is exact, so the fused kernel's order does not
    matter)."""
    acc = coarse_acc.double() * float(2 ** (bits - 1)) + fine_acc.double()
    return (device.ldexp(acc, e) + guard.double()).float()


# -- the two product engines: integer kernels, or the float simulation of the same semantics -----


class _FloatProducts:
    """Float32 products of decoded codes: the float simulation of the ``int8`` mode."""

    @staticmethod
    def decode(codes: torch.Tensor, e, guard=None) -> torch.Tensor:
        v = device.decode(codes, torch.as_tensor(e, device=codes.device), torch.float32)
        return v if guard is None else v + guard

    def conv_forward(self, a: ActivationCodes, w, ew, geom):
        x = self.decode(a.codes, a.exponent, a.guard)
        return F.conv2d(x, self.decode(w, ew), None, *geom)

    def conv_input(self, planes, w, ew, shape, geom, bits):
        err = decode_error2(planes, bits)
        return torch.nn.grad.conv2d_input(shape, self.decode(w, ew), err, *geom)

    def conv_weight(self, a: ActivationCodes, planes, wshape, geom, bits):
        err = decode_error2(planes, bits)
        return torch.nn.grad.conv2d_weight(self.decode(a.codes, a.exponent), wshape, err, *geom)

    def linear_forward(self, a: ActivationCodes, w, ew):
        return F.linear(self.decode(a.codes, a.exponent, a.guard), self.decode(w, ew))

    def linear_input(self, planes, w, ew, bits):
        return decode_error2(planes, bits) @ self.decode(w, ew)

    def linear_weight(self, a: ActivationCodes, planes, bits):
        return decode_error2(planes, bits).t() @ self.decode(a.codes, a.exponent)


class _IntegerProducts:
    """Exact integer products on ``wageubn.kernels``."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def conv_forward(self, a: ActivationCodes, w, ew, geom):
        return kernels.conv2d_forward(
            _as_input(a), w, *geom, backend=self.backend, out_exponent=a.exponent + ew,
            out_guard=a.guard,
        )  # fmt: skip

    def conv_input(self, planes, w, ew, shape, geom, bits):
        # one product over both planes stacked along the batch (2·N images), combined by the
        # kernel (inside oneDNN's convolution on the CPU)
        n, o, h, wd = planes.shape
        both = planes.major.view(2 * n, h, wd, o).permute(0, 3, 1, 2)
        return kernels.conv2d_input_grad_planes(
            both, w, shape, *geom, shift=bits - 1, backend=self.backend,
            out_exponent=planes.exponent - (bits - 1) + ew, out_guard=planes.guard,
        )  # fmt: skip

    def conv_weight(self, a: ActivationCodes, planes, wshape, geom, bits):
        # one GEMM over both planes side by side (2·O outputs) shares the im2col of A; A as its
        # int8 codes (a ReLU's 0..127 are int8 values too): the GEMM then yields the weight's
        # (O, kh, kw, C) order directly (uint8 would have to stand on the left, a transpose)
        x = a.codes
        if geom[3] == 1:
            n, o, h, wd = planes.shape
            both = planes.side.view(n, h, wd, 2 * o).permute(0, 3, 1, 2)
            acc = kernels.conv2d_weight_grad(
                x, both, (2 * wshape[0], *wshape[1:]), *geom, backend=self.backend
            )
            accs = acc[: wshape[0]], acc[wshape[0] :]
        else:  # groups split the output channels: the planes cannot sit side by side
            accs = [
                kernels.conv2d_weight_grad(x, p, wshape, *geom, backend=self.backend)
                for p in (planes.coarse, planes.fine)
            ]
        return _combine(*accs, bits, planes.exponent - bits + 1 + a.exponent, planes.guard)

    def linear_forward(self, a: ActivationCodes, w, ew):
        return kernels.linear_forward(
            _as_input(a), w, backend=self.backend, out_exponent=a.exponent + ew, out_guard=a.guard
        )

    def linear_input(self, planes, w, ew, bits):
        def product(e, out_exponent, guard):
            return kernels.linear_input_grad(
                e, w, backend=self.backend, out_exponent=out_exponent, out_guard=guard
            )

        both = planes.major.view(-1, planes.major.shape[-1])
        return _two_plane_product(product, both, planes, w.shape[0], bits, ew)

    def linear_weight(self, a: ActivationCodes, planes, bits):
        x = a.codes  # int8: Eᵀ @ x comes out (O, K) directly (see conv_weight)
        o = planes.side.shape[-1]
        acc = kernels.linear_weight_grad(planes.side.view(-1, 2 * o), x, backend=self.backend)
        return _combine(acc[:o], acc[o:], bits, planes.exponent - bits + 1 + a.exponent,
                        planes.guard)  # fmt: skip


def products(config: WAGEUBNConfig) -> _FloatProducts | _IntegerProducts:
    """The product engine that ``config.int8_backend`` names."""
    if config.int8_backend == "float":
        return _FloatProducts()
    return _IntegerProducts(config.int8_backend)


# -- autograd functions -------------------------------------------------------------------------


class _Int8Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, geom, config, engine, obs):  # type: ignore[override]
        a = operand_codes(x, config.activation)  # (N, C, H, W) int8 (uint8 view if non-negative)
        w, ew = weight_codes(weight, config.weight)  # (O, C/g, kh, kw) int8
        _observe_operands(obs, x, a, weight, w, ew, config)
        z = engine.conv_forward(a, w, ew, geom)  # (N, O, Ho, Wo) float32
        if bias is not None:
            z = z + bias.view(1, -1, 1, 1)
        # keep A's codes — or, where the fused BN before can rebuild them from the x̂ codes it
        # keeps anyway, only the way to rebuild them
        ctx.rebuild = a.regenerate
        # W itself (a parameter: nothing new to keep); its codes are rebuilt in backward
        ctx.save_for_backward(a.codes if a.regenerate is None else None, weight)
        ctx.ea = a.exponent  # 0-dim, on the device
        ctx.meta = (a.nonneg, ew, tuple(x.shape), tuple(weight.shape), geom, config, engine, obs)
        ctx.has_bias = bias is not None
        return z.detach() if z._is_view() else z  # not a view: callers may add to it in place

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        codes, weight = ctx.saved_tensors
        ea = ctx.ea
        nonneg, ew, x_shape, w_shape, geom, config, engine, obs = ctx.meta
        w = weight_codes(weight, config.weight)[0] if ctx.needs_input_grad[0] else None
        if codes is None and ctx.needs_input_grad[1]:
            codes = ctx.rebuild()
        a = ActivationCodes(codes, ea, ea.new_zeros((), dtype=torch.float32), 0, 0, nonneg, None)
        bits = config.error2
        planes = planes_of(grad, bits)
        _observe_error(obs, grad, planes, bits)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = engine.conv_input(planes, w, ew, x_shape, geom, bits)
        if ctx.needs_input_grad[1]:
            dw = engine.conv_weight(a, planes, w_shape, geom, bits)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = decode_error2(planes, bits).sum((0, 2, 3))
        return dx, dw, db, None, None, None, None


class _Int8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, config, engine, obs):  # type: ignore[override]
        a = operand_codes(x, config.activation)  # (M, K) int8 (uint8 view if non-negative)
        w, ew = weight_codes(weight, config.weight)  # (N, K) int8
        _observe_operands(obs, x, a, weight, w, ew, config)
        z = engine.linear_forward(a, w, ew)  # (M, N) float32
        if bias is not None:
            z = z + bias
        ctx.save_for_backward(a.codes, weight)  # W's codes are rebuilt in backward
        ctx.ea = a.exponent  # 0-dim, on the device
        ctx.meta = (a.nonneg, ew, config, engine, obs)
        ctx.has_bias = bias is not None
        return z.detach() if z._is_view() else z

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        codes, weight = ctx.saved_tensors
        ea = ctx.ea
        nonneg, ew, config, engine, obs = ctx.meta
        w = weight_codes(weight, config.weight)[0] if ctx.needs_input_grad[0] else None
        a = ActivationCodes(codes, ea, ea.new_zeros((), dtype=torch.float32), 0, 0, nonneg, None)
        bits = config.error2
        planes = planes_of(grad, bits)
        _observe_error(obs, grad, planes, bits)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = engine.linear_input(planes, w, ew, bits)
        if ctx.needs_input_grad[1]:
            dw = engine.linear_weight(a, planes, bits)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = decode_error2(planes, bits).sum(0)
        return dx, dw, db, None, None, None


def _observe_operands(obs, x, a: ActivationCodes, weight, w, ew, config) -> None:
    if obs is not None:
        obs("A", x.detach(), device.decode(a.codes, a.exponent, torch.float32), "fit",
            config.activation)  # fmt: skip
        obs("W", weight.detach(), w.float() * 2.0**ew, "QC", config.weight)


def _observe_error(obs, grad, planes: Planes, bits) -> None:
    if obs is not None:
        obs("E2", grad.detach(), decode_error2(planes, bits), "FQ", bits)


def decode_error2(planes, bits: int) -> torch.Tensor:
    """The float32 value of E2 planes: ``coarse·2^e + fine·2^(e−k+1)`` (+ the NaN guard); a
    ``Planes`` or a plain ``(coarse, fine, e)``."""
    if isinstance(planes, Planes):
        coarse, fine, e, guard = planes.coarse, planes.fine, planes.exponent, planes.guard
    else:
        (coarse, fine, e), guard = planes, None
    e = torch.as_tensor(e, device=coarse.device)
    value = device.ldexp(coarse.float(), e) + device.ldexp(fine.float(), e - bits + 1)
    return value if guard is None else value + guard


def int8_conv2d(module: Any, x: torch.Tensor) -> torch.Tensor:
    """``QuantConv2d.forward`` in ``int8`` arithmetic."""
    if module.padding_mode != "zeros":
        raise NotImplementedError(
            f"int8 arithmetic supports padding_mode='zeros' only, got {module.padding_mode!r}"
        )
    if isinstance(module.padding, str):
        raise NotImplementedError(
            f"int8 arithmetic needs numeric padding, got padding={module.padding!r}"
        )
    geom = (module.stride, module.padding, module.dilation, module.groups)
    config = module.config
    engine = products(config)
    return _Int8Conv2d.apply(x, module.weight, module.bias, geom, config, engine, tap(module))


def int8_linear(module: Any, x: torch.Tensor) -> torch.Tensor:
    """``QuantLinear.forward`` in ``int8`` arithmetic (leading dimensions flattened)."""
    lead = x.shape[:-1]
    config = module.config
    z = _Int8Linear.apply(
        x.reshape(-1, x.shape[-1]),
        module.weight,
        module.bias,
        config,
        products(config),
        tap(module),
    )
    return z.reshape(*lead, z.shape[-1])
