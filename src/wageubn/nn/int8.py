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
tensors saved for backward are the int8 codes of A and W plus their exponents — a quarter of
float32. The float result of a product is the exact integer accumulator times its power-of-two
scale, rounded once to float32. The weight gradient leaves the layer in float32 and the optimizer
applies ``CQ`` (with weight decay added first, §3); its ``R`` and codes equal those of the integer
accumulator except where float32 cannot hold that accumulator (``|acc| >= 2^24``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .. import kernels
from ..config import WAGEUBNConfig
from ..quant import clipped_direct_quantize, mul_pow2, pow2_exponent
from ..quant.functions import fit_exponent_of
from ..quant.rounding import finite_minmax
from .observe import tap

__all__ = ["error2_planes", "int8_conv2d", "int8_linear"]


def activation_codes(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """A: int8 codes and exponent of ``fit_quantize(x, k)`` (codes within ±(2^(k−1) − 1)).

    Kept as int8 even when non-negative: the weight gradient then stays in int32 for twice the
    ``K`` of uint8 (``K·127·127`` instead of ``K·255·127`` below 2^31). One min/max pass gives the
    exponent and whether the codes are non-negative (``_as_input``)."""
    cached = getattr(x, "_wageubn_codes", None)  # set by an int8 QuantReLU on its output
    if cached is not None and cached[2] == bits and cached[3] == x._version:
        return cached[0], cached[1]
    lo, hi = finite_minmax(x, "int8 activation")
    e = fit_exponent_of(max(hi, -lo), bits)
    codes = mul_pow2(x.detach(), -e).round_().to(torch.int8)
    return codes, e


def _as_input(a: torch.Tensor, nonneg: bool | None = None) -> torch.Tensor:
    """Non-negative int8 codes (0..127, a ReLU output) viewed as uint8 — the same bytes, and the
    oneDNN forward's fastest input; signed codes stay int8."""
    if nonneg is None:
        nonneg = bool(a.min() >= 0)
    return a.view(torch.uint8) if nonneg else a


def weight_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """W: int8 codes of ``QC(w, k)`` and the exponent ``1 − k``."""
    q = clipped_direct_quantize(w.detach(), bits)
    return mul_pow2(q, bits - 1).to(torch.int8), 1 - bits


def error2_planes(g: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """E2 = FQ(g, k) as ``(coarse, fine, e)``: int8 planes with ``FQ = coarse·2^e + fine·2^(e−k+1)``.

    ``e = r − (k − 1)`` (``s = 2^e``). A fine code that rounds up to ``2^(k−1)`` (the value ``s``) is
    stored as coarse code 1, so both planes fit ``±(2^(k−1) − 1)``. ``None`` for an all-zero ``g``.
    """
    r = pow2_exponent(g, "error2 input")
    if r is None:
        return None
    levels = float(2 ** (bits - 1))
    # f = round(g/s · 2^(k−1)) and c = round(g/s): round-half-even is odd-symmetric, so signed
    # rounding equals FQ's sign · round(|y|). |f| < 2^(k−1) ⟺ fine regime (|y| < 1, not rounding up
    # to s); else coarse, where c = ±1 also covers the fine codes that round up to ±2^(k−1).
    f = mul_pow2(g.detach(), 2 * (bits - 1) - r).round_()
    c = mul_pow2(g.detach(), bits - 1 - r).round_().clamp_(-(levels - 1), levels - 1)
    coarse_regime = f.abs() >= levels
    fine_codes = f.masked_fill_(coarse_regime, 0.0).to(torch.int8)
    coarse_codes = c.masked_fill_(~coarse_regime, 0.0).to(torch.int8)
    return coarse_codes, fine_codes, r - (bits - 1)


def _max_abs_code(t: torch.Tensor) -> int:
    lo, hi = torch.aminmax(t)
    return max(int(hi), -int(lo))


def _two_plane_product(product, planes, other_max: int, k: int, bits: int, e_other: int):
    """``(2^(k−1)·P(coarse) + P(fine))·2^e`` rounded once to float32, for an integer product ``P``.

    When both accumulators are bounded below 2^24 (``K · max|plane| · max|other|``), each converts
    to float32 exactly inside the kernel (``out_exponent``) and one float32 addition is the single
    rounding of the exact sum; otherwise the exact integer accumulators are combined in float64.
    """
    coarse, fine, e = planes
    e_fine = e - bits + 1 + e_other
    bound = k * other_max * max(_max_abs_code(coarse), _max_abs_code(fine))
    # n·2^e with |n| < 2^24 is a float32 exactly when e >= −149 (the subnormal spacing)
    if bound < 2**24 and e_fine >= -149:
        return product(coarse, e_fine + bits - 1) + product(fine, e_fine)
    return _combine(product(coarse, None), product(fine, None), bits, e_fine)


def _combine(coarse_acc: torch.Tensor, fine_acc: torch.Tensor, bits: int, e: int) -> torch.Tensor:
    """``(2^(k−1)·coarse + fine) · 2^e`` rounded once to float32 (float64 holds every sum exactly)."""
    acc = coarse_acc.double().mul_(float(2 ** (bits - 1))).add_(fine_acc.double())
    return mul_pow2(acc, e).float()


# -- the two product engines: integer kernels, or the float simulation of the same semantics -----


class _FloatProducts:
    """Float32 products of decoded codes: the float simulation of the ``int8`` mode."""

    @staticmethod
    def decode(codes: torch.Tensor, e: int) -> torch.Tensor:
        return mul_pow2(codes.float(), e)

    def conv_forward(self, a, ea, w, ew, geom):
        return F.conv2d(self.decode(a, ea), self.decode(w, ew), None, *geom)

    def conv_input(self, planes, w, ew, shape, geom, bits):
        err = decode_error2(planes, bits)
        return torch.nn.grad.conv2d_input(shape, self.decode(w, ew), err, *geom)

    def conv_weight(self, a, ea, planes, wshape, geom, bits):
        err = decode_error2(planes, bits)
        return torch.nn.grad.conv2d_weight(self.decode(a, ea), wshape, err, *geom)

    def linear_forward(self, a, ea, w, ew):
        return F.linear(self.decode(a, ea), self.decode(w, ew))

    def linear_input(self, planes, w, ew, bits):
        return decode_error2(planes, bits) @ self.decode(w, ew)

    def linear_weight(self, a, ea, planes, bits):
        return decode_error2(planes, bits).t() @ self.decode(a, ea)


class _IntegerProducts:
    """Exact integer products on ``wageubn.kernels``."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def conv_forward(self, a, ea, w, ew, geom):
        return kernels.conv2d_forward(
            _as_input(a), w, *geom, backend=self.backend, out_exponent=ea + ew
        )

    def conv_input(self, planes, w, ew, shape, geom, bits):
        def product(plane, out_exponent):
            return kernels.conv2d_input_grad(
                plane, w, shape, *geom, backend=self.backend, out_exponent=out_exponent
            )

        k = (w.shape[0] // geom[3]) * w.shape[2] * w.shape[3]
        return _two_plane_product(product, planes, _max_abs_code(w), k, bits, ew)

    def conv_weight(self, a, ea, planes, wshape, geom, bits):
        # one GEMM over both planes side by side (2·O outputs) shares the im2col of A
        coarse, fine, e = planes
        if geom[3] == 1:
            both = torch.cat([coarse, fine], dim=1)
            acc = kernels.conv2d_weight_grad(
                a, both, (2 * wshape[0], *wshape[1:]), *geom, backend=self.backend
            )
            accs = acc[: wshape[0]], acc[wshape[0] :]
        else:  # groups split the output channels: the planes cannot sit side by side
            accs = [
                kernels.conv2d_weight_grad(a, p, wshape, *geom, backend=self.backend)
                for p in (coarse, fine)
            ]
        return _combine(*accs, bits, e - bits + 1 + ea)

    def linear_forward(self, a, ea, w, ew):
        return kernels.linear_forward(_as_input(a), w, backend=self.backend, out_exponent=ea + ew)

    def linear_input(self, planes, w, ew, bits):
        def product(plane, out_exponent):
            return kernels.linear_input_grad(
                plane, w, backend=self.backend, out_exponent=out_exponent
            )

        return _two_plane_product(product, planes, _max_abs_code(w), w.shape[0], bits, ew)

    def linear_weight(self, a, ea, planes, bits):
        coarse, fine, e = planes
        accs = [kernels.linear_weight_grad(p, a, backend=self.backend) for p in (coarse, fine)]
        return _combine(*accs, bits, e - bits + 1 + ea)


def products(config: WAGEUBNConfig) -> _FloatProducts | _IntegerProducts:
    """The product engine that ``config.int8_backend`` names."""
    if config.int8_backend == "float":
        return _FloatProducts()
    return _IntegerProducts(config.int8_backend)


# -- autograd functions -------------------------------------------------------------------------


class _Int8Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, geom, config, engine, obs):  # type: ignore[override]
        a, ea = activation_codes(x, config.activation)  # (N, C, H, W) uint8/int8
        w, ew = weight_codes(weight, config.weight)  # (O, C/g, kh, kw) int8
        _observe_operands(obs, x, a, ea, weight, w, ew, config)
        z = engine.conv_forward(a, ea, w, ew, geom)  # (N, O, Ho, Wo) float32
        if bias is not None:
            z = z + bias.view(1, -1, 1, 1)
        ctx.save_for_backward(a, w)
        ctx.meta = (ea, ew, tuple(x.shape), tuple(weight.shape), geom, config, engine, obs)
        ctx.has_bias = bias is not None
        return z

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        a, w = ctx.saved_tensors
        ea, ew, x_shape, w_shape, geom, config, engine, obs = ctx.meta
        bits = config.error2
        planes = error2_planes(grad, bits)
        _observe_error(obs, grad, planes, bits)
        dx = dw = db = None
        if planes is None:
            dx, dw = grad.new_zeros(x_shape), grad.new_zeros(w_shape)
        else:
            if ctx.needs_input_grad[0]:
                dx = engine.conv_input(planes, w, ew, x_shape, geom, bits)
            if ctx.needs_input_grad[1]:
                dw = engine.conv_weight(a, ea, planes, w_shape, geom, bits)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = _decoded_error(planes, bits, grad).sum((0, 2, 3))
        return dx, dw, db, None, None, None, None


class _Int8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, config, engine, obs):  # type: ignore[override]
        a, ea = activation_codes(x, config.activation)  # (M, K) uint8/int8
        w, ew = weight_codes(weight, config.weight)  # (N, K) int8
        _observe_operands(obs, x, a, ea, weight, w, ew, config)
        z = engine.linear_forward(a, ea, w, ew)  # (M, N) float32
        if bias is not None:
            z = z + bias
        ctx.save_for_backward(a, w)
        ctx.meta = (ea, ew, config, engine, obs)
        ctx.has_bias = bias is not None
        return z

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        a, w = ctx.saved_tensors
        ea, ew, config, engine, obs = ctx.meta
        bits = config.error2
        planes = error2_planes(grad, bits)
        _observe_error(obs, grad, planes, bits)
        dx = dw = db = None
        if planes is None:
            dx, dw = grad.new_zeros(a.shape), grad.new_zeros(w.shape)
        else:
            if ctx.needs_input_grad[0]:
                dx = engine.linear_input(planes, w, ew, bits)
            if ctx.needs_input_grad[1]:
                dw = engine.linear_weight(a, ea, planes, bits)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = _decoded_error(planes, bits, grad).sum(0)
        return dx, dw, db, None, None, None


def _observe_operands(obs, x, a, ea, weight, w, ew, config) -> None:
    if obs is not None:
        obs("A", x.detach(), mul_pow2(a.float(), ea), "fit", config.activation)
        obs("W", weight.detach(), mul_pow2(w.float(), ew), "QC", config.weight)


def _observe_error(obs, grad, planes, bits) -> None:
    if obs is not None:
        obs("E2", grad.detach(), _decoded_error(planes, bits, grad), "FQ", bits)


def decode_error2(planes: tuple[torch.Tensor, torch.Tensor, int], bits: int) -> torch.Tensor:
    """The float32 value of E2 planes: ``coarse·2^e + fine·2^(e−k+1)``."""
    coarse, fine, e = planes
    return mul_pow2(coarse.float(), e) + mul_pow2(fine.float(), e - bits + 1)


def _decoded_error(planes, bits: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if planes is None else decode_error2(planes, bits)


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
