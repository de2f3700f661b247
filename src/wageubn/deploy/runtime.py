"""Integer-only inference of an exported model: ``IntegerModel.load(path)(images)``.

Every value on the data path is an integer tensor ``v`` (int64; uint8/int8 digit planes as kernel
operands) with a scale ``s`` that is a Python ``Fraction`` (value = ``v · s``). Scales are exact
rationals, never floats, so every op below is exact integer arithmetic plus at most one rounding,
done the way the contract rounds (to nearest, ties to even):

=====================  ==============================================================================
op                     integer arithmetic
=====================  ==============================================================================
stem (input conv)      pixels ``b`` (uint8) enter unchanged: ``x = (b/255 − m)/s`` is affine, so
                       ``conv(x, w) = (conv(b, w)·2^j − 255·m·2^j·conv(1, w)) / (255·s·2^j)`` —
                       one exact kernel call on the raw bytes plus a per-position constant (the
                       zero padding of ``x`` is ``b = 255·m``, hence ``conv(1, w)`` on the valid
                       taps). ``255·m·2^j`` is an integer for float32 ``m`` (exact).
conv2d / linear        ``wageubn.kernels`` on int8 weights and the input split into base-256 digit
                       planes (uint8 low digits, int8 top digit: exact for any integer input);
                       accumulators int32/int64; scale ``s_in · 2^w_exp``; bias rounded once onto
                       that grid.
batchnorm              ``x̂ = RNE(2^(k−1)·(v·s − μ)/σ)`` per channel as ``RNE((v·P − Q)/D)`` with
                       integers ``P, Q, D`` (exact rational folding of s, μ, σ); ``y = x̂·γ + β``
                       on the common grid (``2^-14`` for 8-bit γ, β).
relu                   ``max(v, 0)``, then ``Q(·, k)``: ``RNE(v·s·2^(k−1))`` (paper) or the
                       ``fit_quantize`` exponent found from ``max|v|`` (int8 arithmetic).
pools, add, flatten    integer max / window sums (scale ÷ window size) / sums on a common grid.
=====================  ==============================================================================

``RNE(n/d)`` with ``d > 0`` is ``q = floor(n/d)``, ``r = n − q·d``, ``q + [2r > d or (2r = d and q
odd)]``. A product that could leave int64 raises ``OverflowError``; nothing wraps silently.
The logits come back as ``IntegerLogits(values, scale)``: integers and their exact scale.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F

from .. import kernels
from .format import read_export
from .integer import (
    Scaled,
    align,
    check_int64,
    digit_planes,
    fit_exponent_scaled,
    max_abs,
    rne_div,
    scale_by,
)

__all__ = ["IntegerLogits", "IntegerModel"]


class IntegerLogits(NamedTuple):
    """Logits ``values · scale``: int64 ``values`` (N, classes) and their exact positive scale."""

    values: torch.Tensor
    scale: Fraction

    def argmax(self) -> torch.Tensor:
        return self.values.argmax(1)

    def to_float(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The logits rounded to ``dtype`` (via float64; after the integer data path, to compare)."""
        scale = self.scale
        flat = [
            float(v * scale) for v in self.values.flatten().tolist()
        ]  # exact, then one rounding
        out = torch.tensor(flat, dtype=torch.float64)
        return out.view(self.values.shape).to(dtype)


class IntegerModel:
    """An exported model run with integer tensor operations only (see the module docstring).

    ``IntegerModel.load(path)(images)``: ``images`` uint8 (N, C, H, W) raw pixels; returns
    ``IntegerLogits``. ``backend`` picks the ``wageubn.kernels`` backend of the products.
    """

    def __init__(
        self,
        graph: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        meta: dict[str, Any],
        *,
        backend: str = "auto",
    ) -> None:
        self.graph = graph
        self.tensors = tensors
        self.meta = meta
        self.backend = backend
        self.config = meta.get("config", {})
        self._cache: dict[Any, Any] = {}
        self._biases = {
            k: [Fraction(x) for x in t.tolist()] for k, t in tensors.items() if k.endswith(".bias")
        }
        inp = graph["input"]
        self.mean = [Fraction(m) for m in inp["mean"]]
        self.std = [Fraction(s) for s in inp["std"]]
        self.channels = int(inp["channels"])

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, backend: str = "auto") -> IntegerModel:
        """Read and validate an export (``wageubn.deploy.format.read_export``); ``DeployError``
        names the file and what is wrong."""
        graph, tensors, info = read_export(path)
        return cls(graph, tensors, info, backend=backend)

    # -- running -----------------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor) -> IntegerLogits:
        """Logits of ``images`` (uint8 (N, C, H, W) raw pixels, 0..255)."""
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = (
                f"{images.dtype} {tuple(images.shape)}"
                if isinstance(images, torch.Tensor)
                else type(images).__name__
            )
            raise TypeError(f"IntegerModel: images must be uint8 (N, C, H, W), got {got}")
        if images.shape[1] != self.channels:
            raise ValueError(
                f"IntegerModel: images have {images.shape[1]} channels, the model takes "
                f"{self.channels}"
            )
        out = self.intermediates(images)[self.graph["output"]]
        return IntegerLogits(out.v, out.scale)

    def intermediates(self, images: torch.Tensor) -> dict[str, Any]:
        """Every node's value ``(v, scale)`` by node name (``"input"``: the pixels)."""
        values: dict[str, Any] = {"input": images}
        for node in self.graph["nodes"]:
            args = [values[i] for i in node["inputs"]]
            values[node["name"]] = getattr(self, "_op_" + node["op"])(node, *args)
        return values

    def predict(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Class indices (int64) of ``images``, ``batch_size`` at a time."""
        preds = [
            self(images[i : i + batch_size]).argmax() for i in range(0, len(images), batch_size)
        ]
        return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)

    # -- ops ---------------------------------------------------------------------------------------
    def _op_identity(self, node: dict, x: Scaled) -> Scaled:
        return x

    def _op_flatten(self, node: dict, x: Scaled) -> Scaled:
        return Scaled(x.v.flatten(node["start_dim"], node["end_dim"]), x.scale)

    def _op_add(self, node: dict, a: Scaled, b: Scaled) -> Scaled:
        va, vb, scale = align(a, b, node["name"])
        return Scaled(va + vb, scale)

    def _op_maxpool2d(self, node: dict, x: Scaled) -> Scaled:
        v = F.max_pool2d(
            x.v,
            node["kernel"],
            node["stride"],
            node["padding"],
            node["dilation"],
            ceil_mode=node["ceil_mode"],
        )
        return Scaled(v, x.scale)

    def _window_sum(self, v: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
        if any(padding):
            v = F.pad(v, (padding[1], padding[1], padding[0], padding[0]))
        return v.unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1]).sum((-1, -2))

    def _op_avgpool2d(self, node: dict, x: Scaled) -> Scaled:
        k = node["kernel"]
        v = self._window_sum(x.v, k, node["stride"], node["padding"])
        return Scaled(v, x.scale / (node["divisor"] or k[0] * k[1]))

    def _op_adaptive_avgpool2d(self, node: dict, x: Scaled) -> Scaled:
        h, w = x.v.shape[-2:]
        oh, ow = (
            s if s is not None else d for s, d in zip(node["output_size"], (h, w), strict=True)
        )
        if h % oh or w % ow:
            raise NotImplementedError(
                f"{node['name']}: adaptive average pooling of {h}x{w} to {oh}x{ow} has unequal "
                "windows; integer deployment needs the input size to be a multiple"
            )
        k = [h // oh, w // ow]
        return Scaled(self._window_sum(x.v, k, k, [0, 0]), x.scale / (k[0] * k[1]))

    def _op_relu(self, node: dict, x: Scaled) -> Scaled:
        v = torch.clamp_min(x.v, 0)
        bits = node["bits"]
        if bits is None:
            return Scaled(v, x.scale)
        if node["mode"] == "fit":
            e = fit_exponent_scaled(max_abs(v), x.scale, bits)
        else:
            e = 1 - bits
        out_scale = Fraction(2) ** e
        return Scaled(scale_by(v, x.scale / out_scale, node["name"]), out_scale)

    def _op_batchnorm(self, node: dict, x: Scaled) -> Scaled:
        name = node["name"]
        key = (name, x.scale)
        if key not in self._cache:
            self._cache[key] = self._bn_constants(node, x.scale)
        p, q, d, gamma, beta, g_mul, b_mul, y_scale, pq_max = self._cache[key]
        check_int64(max_abs(x.v) * pq_max[0] + pq_max[1], name)
        xhat = rne_div(x.v * p - q, d)  # (N, C, H, W) codes of x̂ at 2^(1−k)
        check_int64(max_abs(xhat) * pq_max[2] + pq_max[3], name)
        return Scaled(xhat * (gamma * g_mul) + beta * b_mul, y_scale)

    def _bn_constants(self, node: dict, scale: Fraction):
        name = node["name"]
        two = Fraction(2)
        mu = [c * two ** node["mu_exp"] for c in self.tensors[f"{name}.mu"].tolist()]
        sigma = [c * two ** node["sigma_exp"] for c in self.tensors[f"{name}.sigma"].tolist()]
        half = two ** (node["xhat_bits"] - 1)
        ps, qs, ds = [], [], []
        for m, s in zip(mu, sigma, strict=True):
            alpha, beta = scale * half / s, half * m / s
            d = math.lcm(alpha.denominator, beta.denominator)
            ps.append(alpha.numerator * (d // alpha.denominator))
            qs.append(beta.numerator * (d // beta.denominator))
            ds.append(d)
        for what, vals in (("multiplier", ps), ("offset", qs), ("divisor", ds)):
            check_int64(max(abs(v) for v in vals), f"{name} BN {what}")
        xhat_scale = 1 / half
        g_scale, b_scale = two ** node["gamma_exp"], two ** node["beta_exp"]
        y_scale = min(xhat_scale * g_scale, b_scale)  # powers of two: the finer grid
        g_mul, b_mul = int(xhat_scale * g_scale / y_scale), int(b_scale / y_scale)
        shape = (1, -1, 1, 1)

        def col(vals):
            return torch.tensor(vals, dtype=torch.int64).view(shape)

        gamma = self.tensors[f"{name}.gamma"].to(torch.int64).view(shape)
        beta = self.tensors[f"{name}.beta"].to(torch.int64).view(shape)
        pq_max = (
            max(abs(v) for v in ps),
            max(abs(v) for v in qs),
            max_abs(gamma) * g_mul,
            max_abs(beta) * b_mul,
        )
        return col(ps), col(qs), col(ds), gamma, beta, g_mul, b_mul, y_scale, pq_max

    def _add_bias(self, node: dict, acc: Scaled) -> Scaled:
        """``acc + bias`` exactly: a float32 bias is a binary fraction, so both lie on the grid
        ``gcd(acc scale, 2^e_bias)`` (no rounding; the float model rounds this sum once)."""
        if not node["bias"]:
            return acc
        key = (node["name"], "bias")
        if key not in self._cache:
            values = self._biases[f"{node['name']}.bias"]
            den = max((b.denominator for b in values), default=1)
            scale = Fraction(1, den)  # den is a power of two
            codes = torch.tensor([int(b * den) for b in values], dtype=torch.int64)
            self._cache[key] = Scaled(codes.view(1, -1, *([1] * (acc.v.dim() - 2))), scale)
        bias = self._cache[key]
        va, vb, scale = align(acc, bias, node["name"])
        return Scaled(va + vb, scale)

    def _fit_input(self, node: dict, x: Scaled) -> Scaled:
        """int8 arithmetic: ``fit_quantize`` of a conv/linear input (a no-op after a fit ReLU)."""
        bits = node["input_fit"]
        e = fit_exponent_scaled(max_abs(x.v), x.scale, bits)
        out_scale = Fraction(2) ** e
        return Scaled(scale_by(x.v, x.scale / out_scale, node["name"]), out_scale)

    def _product(self, node: dict, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Exact ``v ⊛ w``: kernel calls on the digit planes of ``v`` and of ``w`` (one weight
        digit for int8 codes; 16-bit deployment codes as ``hi·2^8 + lo``, both int8)."""
        if w.dtype == torch.int8:
            w_digits = [(w, 0)]
        else:
            w64 = w.to(torch.int64)
            lo = torch.bitwise_and(w64 + 128, 255) - 128  # signed low digit in [−128, 127]
            w_digits = [(lo.to(torch.int8), 0), (((w64 - lo) >> 8).to(torch.int8), 8)]
        acc = None
        for (plane, pshift), (wd, wshift) in ((p, d) for p in digit_planes(v) for d in w_digits):
            shift = pshift + wshift
            w = wd
            if node["op"] == "conv2d":
                part = kernels.conv2d_forward(
                    plane,
                    w,
                    node["stride"],
                    node["padding"],
                    node["dilation"],
                    node["groups"],
                    backend=self.backend,
                )
            else:
                part = kernels.linear_forward(plane, w, backend=self.backend)
            part = part.to(torch.int64)
            if shift:
                check_int64(max_abs(part) << shift, node["name"])
                part = part << shift
            acc = part if acc is None else acc + part
        return cast(torch.Tensor, acc)  # at least one plane and one digit

    def _op_linear(self, node: dict, x: Scaled) -> Scaled:
        if node["input_fit"]:
            x = self._fit_input(node, x)
        w = self.tensors[f"{node['name']}.weight"]
        acc = self._product(node, x.v, w)
        scale = x.scale * Fraction(2) ** node["w_exp"]
        return self._add_bias(node, Scaled(acc, scale))

    def _op_conv2d(self, node: dict, x: Any) -> Scaled:
        if isinstance(x, torch.Tensor):  # the stem reads the raw pixels
            return self._stem(node, x)
        if node["input_fit"]:
            x = self._fit_input(node, x)
        w = self.tensors[f"{node['name']}.weight"]
        acc = self._product(node, x.v, w)
        scale = x.scale * Fraction(2) ** node["w_exp"]
        return self._add_bias(node, Scaled(acc, scale))

    def _stem(self, node: dict, images: torch.Tensor) -> Scaled:
        if node["input_fit"]:
            return self._op_conv2d(node, self._fit_pixels(node, images))
        w = self.tensors[f"{node['name']}.weight"]
        j, ratios, offsets, base = self._stem_constants(node)
        h, wd = images.shape[-2:]
        key = (node["name"], "valid", h, wd)
        if key not in self._cache:  # conv(1, w) over the valid taps, per input channel
            ones = torch.ones((1, 1, h, wd), dtype=torch.uint8)
            self._cache[key] = [
                self._product(node, ones, w[:, c : c + 1]) for c in range(self.channels)
            ]
        valid = self._cache[key]
        total = None
        for c in range(self.channels):
            a = self._product(node, images[:, c : c + 1], w[:, c : c + 1])
            t = (a << j) - offsets[c] * valid[c]
            if ratios[c] != 1:
                t = t * ratios[c]
            total = t if total is None else total + t
        total = cast(torch.Tensor, total)  # at least one channel
        return self._add_bias(node, Scaled(total, base * Fraction(2) ** node["w_exp"]))

    def _stem_constants(self, node: dict):
        """``j``, per-channel std ratios (``2^16``-rounded when the stds differ, else 1), the
        integer offsets ``255·m·2^j``, and the scale ``1 / (255·s_0·2^j·2^k)``."""
        key = (node["name"], "stem")
        if key in self._cache:
            return self._cache[key]
        w = self.tensors[f"{node['name']}.weight"].to(torch.int64)
        wsum = int(w.abs().sum((0, 2, 3)).max()) if w.numel() else 0
        exact_j = max(math.log2((255 * m).denominator) for m in self.mean)
        j = int(exact_j)
        same = all(s == self.std[0] for s in self.std)
        k = 0 if same else 16
        ratios = [1 if same else round(self.std[0] / s * 2**k) for s in self.std]
        # |T| <= Σ_c R_c·(255·2^j + 255·m_c·2^j)·Σ|w|: keep it well inside int64
        while (
            j > 0
            and sum(r * 255 * (1 + m) * wsum for r, m in zip(ratios, self.mean, strict=True)) * 2**j
            > 2**46
        ):
            j -= 1
        offsets = [round(255 * m * 2**j) for m in self.mean]
        base = 1 / (255 * self.std[0] * Fraction(2) ** (j + k))
        self._cache[key] = (j, ratios, offsets, base)
        return self._cache[key]

    def _fit_pixels(self, node: dict, images: torch.Tensor) -> Scaled:
        """int8 arithmetic with a quantized stem: ``fit_quantize`` of the normalized batch through
        per-byte tables (the normalization is done once per byte value at load, as the data
        pipeline does it in float32; the data path is a table gather and a max)."""
        key = ("fit_tables", node["input_fit"])
        if key not in self._cache:
            from ..quant import fit_exponent, mul_pow2

            b = torch.arange(256, dtype=torch.float32).div_(255.0)
            m = torch.tensor([float(v) for v in self.mean], dtype=torch.float32)
            s = torch.tensor([float(v) for v in self.std], dtype=torch.float32)
            x = (b[None, :] - m[:, None]) / s[:, None]  # (C, 256) float32, as normalize()
            bits = node["input_fit"]
            exps = torch.tensor(
                [
                    [fit_exponent(x[c, i : i + 1], bits) for i in range(256)]
                    for c in range(self.channels)
                ],
                dtype=torch.int64,
            )
            tables = {int(e): mul_pow2(x, -int(e)).round_().to(torch.int64) for e in exps.unique()}
            self._cache[key] = (exps, tables)
        exps, tables = self._cache[key]
        idx = images.to(torch.int64)
        chan = torch.arange(self.channels).view(1, -1, 1, 1)
        e = int(exps[chan, idx].max())
        return Scaled(tables[e][chan, idx], Fraction(2) ** e)
