r"""The op table of the profiler: what one dispatched aten op costs, as counted ``Event``\ s.

``classify(func, args, kwargs, out)`` turns an op and the tensors it actually received into:

* products — ``convolution`` / ``convolution_backward`` (``N·O·Ho·Wo·C/g·kh·kw`` per direction,
  from the op's own argument shapes), ``mm``/``addmm``/``bmm``/``baddbmm``/``_int_mm``/``linear``
  (``M·K·N``) and ``onednn.qconv2d_pointwise`` (the packed weight keeps its logical shape) — are
  multiply-accumulates typed by the operand dtypes and the accumulator (``uint8×int8→int32``);
* elementwise ops are adds (add, sub, compare, select, clamp, round, …; a reduction is one add
  per input element) or multiplies (mul, div, sqrt, exp, …) in the dtype they compute in; a few
  fused ops (batch norm, log-softmax, pooling, NLL) have fixed per-element counts (``_FUSED``);
* copies, casts, views, allocation and random-number generation are tallied, not costed.

``grid_bits`` / ``on_grid`` tell the bits a tensor's values need (for memory "as quantized").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .energy import OpType

__all__ = ["Event", "classify", "dtype_label", "grid_bits", "on_grid"]

_NAMES = {
    torch.float32: ("float", 32, "fp32"),
    torch.float64: ("float", 64, "fp64"),
    torch.float16: ("float", 16, "fp16"),
    torch.bfloat16: ("float", 16, "bf16"),
    torch.int8: ("int", 8, "int8"),
    torch.uint8: ("int", 8, "uint8"),
    torch.int16: ("int", 16, "int16"),
    torch.int32: ("int", 32, "int32"),
    torch.int64: ("int", 64, "int64"),
    torch.bool: ("int", 1, "bool"),
}


def dtype_label(dtype: torch.dtype) -> tuple[str, int, str]:
    """``(format, bits, short name)`` of a dtype: ``torch.uint8 → ("int", 8, "uint8")``."""
    return _NAMES.get(dtype, ("float" if dtype.is_floating_point else "int",
                              dtype.itemsize * 8, str(dtype).removeprefix("torch.")))  # fmt: skip


# elementwise: (adds per input element, muls per input element, adds per output, muls per output)
_ADD_OUT = (0, 0, 1, 0)
_MUL_OUT = (0, 0, 0, 1)
_ELEMENTWISE: dict[str, tuple[int, int, int, int]] = {
    **dict.fromkeys(
        "add sub rsub neg abs relu threshold_backward clamp clamp_min clamp_max clip maximum "
        "minimum fmax fmin round floor ceil trunc frac sign sgn where masked_fill eq ne lt le gt "
        "ge bitwise_and bitwise_or bitwise_xor bitwise_not logical_and logical_or logical_not "
        "logical_xor hardtanh isnan isinf isfinite nan_to_num signbit frexp".split(),
        _ADD_OUT,
    ),
    **dict.fromkeys(
        "mul div true_divide floor_divide remainder fmod reciprocal sqrt rsqrt pow square exp "
        "exp2 expm1 log log2 log1p sigmoid tanh erf ldexp".split(),
        _MUL_OUT,
    ),
    **dict.fromkeys("sum amax amin argmax argmin any all cumsum".split(), (1, 0, 0, 0)),
    "mean": (1, 0, 0, 1),
    "aminmax": (2, 0, 0, 0),
    "prod": (0, 1, 0, 0),
    "norm": (1, 1, 0, 1),
    "linalg_vector_norm": (1, 1, 0, 1),
    "var": (3, 1, 0, 0),  # mean pass (add), then subtract, square (mul) and sum
    "std": (3, 1, 0, 1),
    "var_mean": (3, 1, 0, 1),
    "std_mean": (3, 1, 0, 2),
    "addcmul": (0, 0, 1, 2),
    "addcdiv": (0, 0, 1, 2),
    "lerp": (0, 0, 2, 1),
    "mse_loss": (2, 1, 0, 0),
    "leaky_relu": (0, 0, 1, 1),
}
# Fused ops, per input element: (adds, muls). Batch norm forward = batch mean (add), variance
# (sub, square, add), normalise (sub, mul), affine (mul, add); backward = sum(dy), sum(dy·x̂)
# with x̂ recomputed (sub, mul, mul, add), dx = (dy − mean − x̂·mean)·γ/σ (2 sub, 2 mul).
_FUSED: dict[str, tuple[int, int]] = {
    "native_batch_norm": (5, 3),
    "_native_batch_norm_legit": (5, 3),
    "_native_batch_norm_legit_functional": (5, 3),
    "_native_batch_norm_legit_no_training": (2, 2),
    "native_batch_norm_backward": (5, 4),
    "_log_softmax": (4, 1),  # max, subtract, exp, sum, subtract the log
    "_log_softmax_backward_data": (2, 2),
    "_softmax": (3, 2),
    "_softmax_backward_data": (2, 2),
    "_adaptive_avg_pool2d": (1, 0),
    "_adaptive_avg_pool2d_backward": (0, 1),
    "avg_pool2d_backward": (0, 1),
}
# Data movement, casts, allocation, views, host reads and RNG: tallied, not costed.
_MOVES = set(
    "detach view _unsafe_view alias t transpose permute expand squeeze unsqueeze slice select "
    "as_strided as_strided_ reshape clone copy_ _to_copy contiguous empty empty_like empty_strided "
    "zeros zeros_like ones ones_like full full_like new_zeros new_empty new_full new_ones fill_ "
    "zero_ lift_fresh lift_fresh_copy scalar_tensor _local_scalar_dense constant_pad_nd cat stack "
    "split split_with_sizes chunk unbind index index_select gather scatter scatter_add index_put_ "
    "resize_ set_ arange masked_select flip roll repeat narrow qconv_prepack "
    "_record_function_enter_new _record_function_exit rand randn randint bernoulli bernoulli_ "
    "uniform_ normal_ random_ _foreach_zero_ unfold".split()
)
_PRODUCTS = {"convolution", "convolution_backward", "mm", "addmm", "bmm", "baddbmm", "_int_mm",
             "linear", "qconv2d_pointwise", "dot", "mv", "addmv"}  # fmt: skip


@dataclass
class Event:
    """One counted quantity: ``what`` is ``"mac"``, ``"elementwise"`` or ``"uncosted"``."""

    what: str
    count: int
    type: OpType | None = None
    name: str = ""
    direction: str = ""


def _numel(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel()
    if isinstance(x, (tuple, list)):
        return sum(_numel(v) for v in x)
    return 0


def _tensors(args: Any) -> list[torch.Tensor]:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (tuple, list)):
            out.extend(t for t in a if isinstance(t, torch.Tensor))
    return out


def _mac_type(a: torch.dtype, b: torch.dtype, acc: torch.dtype | None = None) -> OpType:
    fa, ba, na = dtype_label(a)
    fb, bb, nb = dtype_label(b)
    if fa == "float" or fb == "float":
        wide = a if ba >= bb else b
        fmt, bits, name = dtype_label(wide if acc is None else acc)
        return OpType.mac("float", bits, bits, bits, f"{name}×{name}→{name}")
    acc = acc or (torch.int64 if max(ba, bb) > 32 else torch.int32)
    _, bacc, nacc = dtype_label(acc)
    return OpType.mac("int", ba, bb, bacc, f"{na}×{nb}→{nacc}")


def _elementwise_type(op: str, dtype: torch.dtype) -> OpType:
    fmt, bits, name = dtype_label(dtype)
    return OpType.elementwise(op, fmt, bits, name)


def _products(name: str, args: tuple, kwargs: dict, out: Any) -> list[Event]:
    """MAC events (and bias adds) of one product op, from its own argument shapes."""
    ev: list[Event] = []
    if name == "convolution":
        x, w, bias = args[0], args[1], args[2]
        transposed = bool(args[6]) if len(args) > 6 else False
        taps = w.shape[2:].numel() if w.dim() > 2 else 1
        n = (x.numel() if transposed else out.numel()) * w.shape[1] * taps
        ev.append(Event("mac", n, _mac_type(x.dtype, w.dtype)))
        if bias is not None:
            ev.append(Event("elementwise", out.numel(), _elementwise_type("add", out.dtype)))
    elif name == "convolution_backward":
        g, x, w = args[0], args[1], args[2]
        mask = args[10] if len(args) > 10 else kwargs.get("output_mask", (True, True, True))
        transposed = bool(args[7])
        taps = w.shape[2:].numel() if w.dim() > 2 else 1
        n = (x.numel() if transposed else g.numel()) * w.shape[1] * taps
        if mask[0]:
            ev.append(Event("mac", n, _mac_type(g.dtype, w.dtype), direction="input_grad"))
        if mask[1]:
            ev.append(Event("mac", n, _mac_type(g.dtype, x.dtype), direction="weight_grad"))
        if mask[2]:
            ev.append(Event("elementwise", g.numel(), _elementwise_type("add", g.dtype)))
    elif name == "qconv2d_pointwise":  # onednn: (x, x_scale, x_zp, packed w (O, C/g, kh, kw), ...)
        x, w = args[0], args[3]
        n = out.numel() * w.shape[1] * w.shape[2:].numel()
        ev.append(Event("mac", n, _mac_type(x.dtype, w.dtype, torch.int32)))
    elif name in ("mm", "_int_mm", "bmm", "dot", "mv"):
        a, b = args[0], args[1]
        acc = torch.int32 if name == "_int_mm" else None
        ev.append(Event("mac", out.numel() * a.shape[-1], _mac_type(a.dtype, b.dtype, acc)))
    elif name in ("addmm", "baddbmm", "addmv"):
        bias, a, b = args[0], args[1], args[2]
        ev.append(Event("mac", out.numel() * a.shape[-1], _mac_type(a.dtype, b.dtype)))
        ev.append(Event("elementwise", out.numel(), _elementwise_type("add", out.dtype)))
    elif name == "linear":
        x, w = args[0], args[1]
        ev.append(Event("mac", out.numel() * w.shape[1], _mac_type(x.dtype, w.dtype)))
        if len(args) > 2 and args[2] is not None:
            ev.append(Event("elementwise", out.numel(), _elementwise_type("add", out.dtype)))
    return ev


def classify(func: Any, args: tuple, kwargs: dict, out: Any) -> list[Event]:
    """The counted events of one dispatched op (see the module docstring for the rules)."""
    name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
    overload = getattr(func, "_overloadname", "")
    base = name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name
    ins = _tensors(args)
    n_out = _numel(out[0] if isinstance(out, (tuple, list)) and out else out)
    n_in = ins[0].numel() if ins else 0
    if base in _PRODUCTS:
        return _products(base, args, kwargs, out)
    if base in ("max", "min"):  # binary with a tensor, else a reduction
        coef = _ADD_OUT if overload == "other" else (1, 0, 0, 0)
    elif base in _ELEMENTWISE:
        coef = _ELEMENTWISE[base]
    elif base in _FUSED:
        adds, muls = _FUSED[base]
        if base == "native_batch_norm" and len(args) > 5 and not args[5]:
            adds, muls = _FUSED["_native_batch_norm_legit_no_training"]
        coef = (adds, muls, 0, 0)
        if base == "_adaptive_avg_pool2d":
            coef = (1, 0, 0, 1)
    elif base in ("max_pool2d_with_indices", "max_pool2d"):
        k = args[1] if len(args) > 1 else kwargs["kernel_size"]
        k = (k, k) if isinstance(k, int) else tuple(k) * (2 // len(k))
        first = out[0] if isinstance(out, (tuple, list)) else out
        return [Event("elementwise", first.numel() * (k[0] * k[1] - 1),
                      _elementwise_type("add", first.dtype))]  # fmt: skip
    elif base in ("max_pool2d_with_indices_backward", "nll_loss_forward", "nll_loss_backward",
                  "nll_loss2d_forward", "nll_loss2d_backward", "avg_pool2d"):  # fmt: skip
        # one add per gradient routed / per picked target / per pooled input
        src = args[0] if base.startswith("max_pool") or base == "avg_pool2d" else args[1]
        if base.startswith("nll_loss"):
            src = args[2] if base.endswith("backward") else args[1]
        dtype = ins[0].dtype if ins else torch.float32
        return [Event("elementwise", src.numel(), _elementwise_type("add", dtype))]
    elif base in _MOVES or name in _MOVES:
        return [Event("uncosted", n_out, name=name)]
    else:
        return [Event("uncosted", n_out, name=f"{name} (unknown op)")]
    # the dtype the op computes in: its inputs' for comparisons and reductions, else its output's
    first = out[0] if isinstance(out, (tuple, list)) else out
    dtype = first.dtype if isinstance(first, torch.Tensor) else torch.float32
    if ins and (dtype == torch.bool or coef[0] or coef[1]):
        dtype = next((t.dtype for t in ins if t.dtype != torch.bool), ins[0].dtype)
    if base in ("add", "sub") and kwargs.get("alpha", 1) != 1:
        coef = (0, 0, 1, 1)
    adds = coef[0] * n_in + coef[2] * n_out
    muls = coef[1] * n_in + coef[3] * n_out
    ev = []
    if adds:
        ev.append(Event("elementwise", adds, _elementwise_type("add", dtype)))
    if muls:
        ev.append(Event("elementwise", muls, _elementwise_type("mul", dtype)))
    return ev


def grid_bits(t: torch.Tensor) -> int | None:
    """Bits of the narrowest fixed-point form ``t = c · 2^e`` (one integer ``e`` for the tensor,
    integer codes ``c``, a sign bit when any code is negative); ``None`` when that needs more
    than 32 bits (the tensor is not on any low-bit grid) or ``t`` is not finite."""
    if t.numel() == 0:
        return 0
    if t.dtype == torch.bool:
        return 1
    sign = 1 if bool((t < 0).any()) else 0
    if not t.dtype.is_floating_point:
        top = int(t.abs().max())
        return max(top.bit_length(), 1) + sign
    t = t.detach().double()
    if not bool(torch.isfinite(t).all()):
        return None
    nz = t[t != 0]
    if nz.numel() == 0:
        return 1
    mant, exp = torch.frexp(nz.abs())  # |t| = mant · 2^exp, mant in [0.5, 1)
    k = (mant * 2.0**53).to(torch.int64)  # exact: 53 significant bits
    low = torch.frexp((k & -k).double())[1] - 1  # trailing zero bits of each significand
    lsb = int((exp.to(torch.int64) - 53 + low).min())
    bits = int(exp.max()) - lsb + sign
    return bits if bits <= 32 else None


def on_grid(x: torch.Tensor, bits: int) -> bool:
    """``x · 2^(bits−1)`` is an integer everywhere: ``x`` lies on the contract's k-bit grid."""
    y = x.detach() * float(2 ** (bits - 1))
    return bool(torch.isfinite(y).all()) and bool((y == y.round()).all())
