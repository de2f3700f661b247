"""Functional calls in a model's ``forward``: quantize the activations, report what stays float.

``quantize_`` swaps modules; a ``forward`` that calls ``F.relu(x)``, ``F.gelu(x)``, ``x.sigmoid()``
... has no module to swap. This pass reads each module's own ``forward`` with ``torch.fx``
(``wageubn.fuse.Tracer``, every child module a leaf, so one graph is exactly that module's own
code) and:

* replaces each functional activation with a call of a quantized activation module (the same A
  and E1 quantizers as ``QuantReLU``, ``QuantGELU``, ...), registered on the module as
  ``_wageubn_fn<i>`` (no parameters: the state dict does not change), and runs the rewritten
  graph as that module's ``forward``. The graph is traced in training and in eval mode (code that
  branches on ``self.training`` is kept as two graphs; the module picks by its mode);
* lists every other call that computes values and stays float (``FloatCall``): functional
  products (``F.linear``, ``torch.matmul``, ``einsum``, ``@``), functional normalizations,
  softmax, residual sums (float by the contract, docs/WAGEUBN.md §2), elementwise products,
  pooling, anything unknown, and every module that cannot be traced (its calls are unknown);
* refuses (``problems``) a module whose ``forward`` reads a weight of a child that ``quantize_``
  would quantize (``F.linear(x, self.qkv.weight)``): that layer would run float while its gradient
  is quantized as a weight's.

Shape-only calls (``flatten``, ``reshape``, ``cat``, ``getitem``, dropout, max-pooling ...) are
neither rewritten nor listed. An in-place activation whose result is unused, or whose input is
read again after it, is left as it is and listed. ``to_float_`` undoes the rewrite.
"""

from __future__ import annotations

import functools
import logging
import operator
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from .config import WAGEUBNConfig
from .nn import QuantReLU
from .nn.activations import (
    QuantGELU,
    QuantHardsigmoid,
    QuantHardswish,
    QuantLeakyReLU,
    QuantReLU6,
    QuantSigmoid,
    QuantSiLU,
    QuantTanh,
)

__all__ = ["FloatCall", "FunctionalPlan", "plan_functional", "undo_functional"]

log = logging.getLogger(__name__)

_MARK = "_wageubn_functional"  # on a rewritten module: the names of the modules it added

# activation -> (kind, names of the arguments after the input, in order)
_ACTIVATIONS: dict[object, tuple[str, tuple[str, ...]]] = {
    F.relu: ("relu", ("inplace",)),
    torch.relu: ("relu", ()),
    torch.relu_: ("relu_", ()),
    F.relu6: ("relu6", ("inplace",)),
    F.hardtanh: ("hardtanh", ("min_val", "max_val", "inplace")),
    F.leaky_relu: ("leaky_relu", ("negative_slope", "inplace")),
    F.hardswish: ("hardswish", ("inplace",)),
    F.hardsigmoid: ("hardsigmoid", ("inplace",)),
    F.silu: ("silu", ("inplace",)),
    F.gelu: ("gelu", ("approximate",)),
    torch.sigmoid: ("sigmoid", ()),
    F.sigmoid: ("sigmoid", ()),
    torch.tanh: ("tanh", ()),
    F.tanh: ("tanh", ()),
}
_METHOD_ACTIVATIONS = {"relu": "relu", "relu_": "relu_", "sigmoid": "sigmoid",
                       "sigmoid_": "sigmoid_", "tanh": "tanh", "tanh_": "tanh_"}  # fmt: skip

_SHAPE_ONLY = {
    "flatten", "reshape", "view", "view_as", "permute", "transpose", "t", "cat", "concat",
    "stack", "getitem", "getattr", "size", "dim", "contiguous", "chunk", "split", "unbind",
    "unsqueeze", "squeeze", "expand", "expand_as", "repeat", "dropout", "dropout1d", "dropout2d",
    "alpha_dropout", "pad", "_assert", "max_pool1d", "max_pool2d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "roll", "narrow", "select", "flip", "to", "type_as", "clone", "detach",
    "float", "zeros", "ones", "zeros_like", "ones_like", "arange", "new_zeros", "new_ones",
    "movedim", "swapaxes", "channel_shuffle", "identity", "stochastic_depth", "eq", "ne", "lt",
    "gt", "le", "ge", "_assert_async", "sym_size", "numel", "masked_fill", "full", "full_like",
}  # fmt: skip
_KINDS = {
    "product": {"linear", "conv1d", "conv2d", "conv3d", "matmul", "bmm", "mm", "einsum",
                "baddbmm", "addmm", "scaled_dot_product_attention", "multi_head_attention_forward",
                "bilinear"},
    "normalization": {"layer_norm", "group_norm", "batch_norm", "instance_norm", "normalize",
                      "rms_norm"},
    "softmax": {"softmax", "log_softmax"},
    "sum": {"add", "iadd", "sub", "isub", "add_", "sub_"},
    "elementwise product": {"mul", "imul", "truediv", "itruediv", "div", "mul_", "div_"},
    "pooling": {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "avg_pool1d", "avg_pool2d",
                "mean", "sum"},
    "activation": {"elu", "selu", "celu", "mish", "softplus", "glu", "logsigmoid", "hardtanh",
                   "relu", "relu_", "sigmoid", "tanh", "gelu", "silu", "relu6", "leaky_relu",
                   "hardswish", "hardsigmoid", "sigmoid_", "tanh_", "softsign", "tanhshrink"},
}  # fmt: skip
_NOTES = {
    "product": "a functional product has no quantized counterpart: call a module (nn.Linear, "
    "nn.Conv2d, nn.MultiheadAttention) to quantize it",
    "normalization": "a functional normalization has no quantized counterpart: use the module",
    "softmax": "float, as the attention softmax",
    "sum": "float: residual sums are not re-quantized (docs/WAGEUBN.md §2)",
    "elementwise product": "float: an elementwise product of two tensors is not quantized",
    "pooling": "float, as the contract's avg-pool output",
    "activation": "no quantized counterpart",
    "other": "not a call wageubn knows",
}


@dataclass(frozen=True)
class FloatCall:
    """A call in ``module``'s ``forward`` that computes in float after ``quantize_``."""

    module: str
    """Path of the module whose ``forward`` makes the call ("" is the model itself)."""
    call: str
    """``torch.nn.functional.linear``, ``operator.add``, ``Tensor.softmax``, a parameter, ..."""
    kind: str
    """``product``, ``activation``, ``normalization``, ``softmax``, ``sum``,
    ``elementwise product``, ``pooling``, ``parameter``, ``other`` or ``untraced``."""
    note: str

    def __str__(self) -> str:
        return f"{self.module or 'the model'}: {self.call} ({self.kind}; {self.note})"


@dataclass
class _Rewrite:
    path: str
    module: nn.Module
    graphs: dict[bool, fx.Graph]  # training mode -> graph (one entry when both agree)
    added: dict[str, tuple[type[nn.Module], dict]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)  # the functional activations replaced


@dataclass
class FunctionalPlan:
    """What ``plan_functional`` found; ``apply(config)`` performs the rewrites."""

    rewrites: list[_Rewrite] = field(default_factory=list)
    float_calls: list[FloatCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def apply(self, config: WAGEUBNConfig) -> int:
        """Insert the quantized activation modules and install the rewritten forwards; returns
        how many functional activations are now quantized."""
        for rw in self.rewrites:
            for name, (cls, kwargs) in rw.added.items():
                rw.module.add_module(name, cls(**kwargs, config=config))
            _install(rw.module, rw.graphs, list(rw.added))
        return sum(len(rw.added) for rw in self.rewrites)


class _OwnCode(fx.Tracer):
    """Traces one module's own ``forward``: every child module is a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _own_forward(mod: nn.Module) -> bool:
    """Whether ``mod`` runs code of its own (not torch.nn's or wageubn's, not a container)."""
    module = type(mod).__module__
    if module.startswith(("torch.nn.", "torch.ao.", "wageubn.")):
        return False
    plain = (nn.Module.forward, nn.Sequential.forward)
    return type(mod).forward not in plain and _MARK not in mod.__dict__


def _name(node: fx.Node) -> tuple[str, str]:
    """(short name, qualified name) of a call node's target."""
    t = node.target
    if node.op == "call_method":
        return str(t), f"Tensor.{t}"
    mod = getattr(t, "__module__", None) or ("torch" if hasattr(torch, str(t)) else "")
    short = getattr(t, "__name__", str(t))
    if t in (operator.add, operator.iadd, operator.mul, operator.matmul, operator.sub,
             operator.truediv, operator.getitem, operator.imul):  # fmt: skip
        mod = "operator"
    if mod.startswith("torch._C"):
        mod = "torch"
    return short, f"{mod}.{short}" if mod else short


def _on_sizes(node: fx.Node, sizes: set[fx.Node]) -> bool:
    """Whether ``node`` computes a size: ``x.size()``, ``x.shape``, or arithmetic on sizes."""
    if node.op == "call_method" and node.target in ("size", "dim", "numel"):
        return True
    if node.target is getattr and len(node.args) > 1 and node.args[1] in ("shape", "ndim"):
        return True
    if node.target in (operator.floordiv, operator.mod):  # integer arithmetic: sizes
        return True
    inputs = [a for a in node.args if isinstance(a, fx.Node)]
    if node.target in _SIZE_ARITHMETIC and any(a in sizes for a in inputs):
        return True  # a tensor scaled by a size (x * d ** -0.5) is not worth a row either
    return bool(inputs) and all(a in sizes for a in inputs)


_SIZE_ARITHMETIC = (operator.add, operator.sub, operator.mul, operator.truediv, operator.pow)


def _makes_tuple(node: fx.Node) -> bool:
    """A named tuple (or tuple) of outputs being built."""
    return isinstance(node.target, type) and issubclass(node.target, tuple)


def _kind(short: str) -> str:
    for kind, names in _KINDS.items():
        if short in names:
            return kind
    return "other"


def plan_functional(
    model: nn.Module,
    convertible: Callable[[nn.Module], bool],
    quantized_roles: Callable[[nn.Module], dict[str, str]],
    selected: Callable[[nn.Module, str], bool],
    float_parameters: Callable[[nn.Module], tuple[str, ...]],
) -> FunctionalPlan:
    """Read every module's own ``forward``; nothing is changed (see the module docstring).

    ``convertible(module)``: a module with a quantized counterpart (its forward is not read);
    ``quantized_roles(child)``: the parameter roles ``child`` will have once converted ({} when
    it stays float): such a parameter may not be read directly; ``selected(module, path)``: the
    user's ``filter_fn``; ``float_parameters(module)``: its own parameters that stay float."""
    plan = FunctionalPlan()
    counter = 0
    for path, mod in model.named_modules():
        for pname in float_parameters(mod):
            plan.float_calls.append(FloatCall(path, f"parameter {pname}", "parameter",
                                              "float, as a bias (an additive parameter)"))  # fmt: skip
        if not _own_forward(mod) or convertible(mod):
            continue
        graphs: dict[bool, fx.Graph] = {}
        try:
            was = mod.training
            for mode in (True, False):
                mod.training = mode
                graphs[mode] = _OwnCode().trace(mod)
            mod.training = was
        except Exception as err:  # noqa: BLE001 - fx raises many kinds; the module stays as it is
            mod.training = was
            first = " ".join(str(err).split())[:160]
            plan.float_calls.append(FloatCall(path, type(mod).__qualname__, "untraced",
                f"torch.fx cannot trace its forward ({type(err).__name__}: {first}); functional "
                "calls in it stay float"))  # fmt: skip
            continue
        if graphs[True].python_code("self").src == graphs[False].python_code("self").src:
            graphs = {True: graphs[True]}
        added: dict[str, tuple[type[nn.Module], dict]] = {}
        calls: list[str] = []
        seen: set[tuple[str, str, str]] = set()
        for graph in graphs.values():
            sizes: set[fx.Node] = set()  # nodes that compute with shapes, not tensors
            index = 0  # the k-th activation of the eval graph shares the train graph's module
            for node in list(graph.nodes):
                if node.op == "get_attr":
                    _check_weight_read(mod, path, node, quantized_roles, plan)
                if node.op not in ("call_function", "call_method"):
                    continue
                swap = _activation_module(node) if selected(mod, path) else None
                if swap is not None:
                    names = list(added)
                    if index < len(names) and added[names[index]] == swap:
                        name = names[index]
                    else:
                        name = f"_wageubn_fn{counter}"
                        counter += 1
                        added[name] = swap
                        calls.append(_name(node)[1])
                    index += 1
                    with graph.inserting_before(node):
                        new = graph.call_module(name, (node.args[0],))
                    node.replace_all_uses_with(new)
                    graph.erase_node(node)
                    continue
                if _on_sizes(node, sizes):
                    sizes.add(node)
                    continue
                short, qual = _name(node)
                if short in _SHAPE_ONLY or _makes_tuple(node):
                    continue
                kind = _kind(short)
                note = _NOTES[kind]
                if kind == "activation" and short in _ACT_SHORT:
                    note = "in place, with its result unused or its input read again: left as is"
                key = (qual, kind, note)
                if key not in seen:  # one row per distinct call of this module
                    seen.add(key)
                    plan.float_calls.append(FloatCall(path, qual, kind, note))
        if added:
            plan.rewrites.append(_Rewrite(path, mod, graphs, added, calls))
    return plan


_ACT_SHORT = {k for k, _ in _ACTIVATIONS.values()} | set(_METHOD_ACTIVATIONS)


def _check_weight_read(mod, path, node, quantized_roles, plan: FunctionalPlan) -> None:
    owner_path, _, attr = str(node.target).rpartition(".")
    if not owner_path:
        return
    try:
        owner = mod.get_submodule(owner_path)
    except AttributeError:
        return
    if attr in quantized_roles(owner):
        where = f"{path}.{owner_path}" if path else owner_path
        problem = (
            f"{path or 'the model'} ({type(mod).__qualname__}) reads {node.target} directly in "
            f"its forward instead of calling {where}, so that layer would run in float while "
            "its weight gradient is quantized"
        )
        if problem not in plan.problems:
            plan.problems.append(problem)


def _arg(node: fx.Node, names: tuple[str, ...], name: str, default):
    if name in node.kwargs:
        return node.kwargs[name]
    i = names.index(name) + 1 if name in names else -1
    return node.args[i] if 0 < i < len(node.args) else default


def _activation_module(node: fx.Node) -> tuple[type[nn.Module], dict] | None:
    """The quantized module (class, kwargs) that can stand for this call, or None."""
    names: tuple[str, ...]
    if node.op == "call_method":
        kind, names = _METHOD_ACTIVATIONS.get(str(node.target), ""), ()
    else:
        kind, names = _ACTIVATIONS.get(node.target, ("", ()))
    if not kind or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    inplace = kind.endswith("_") or bool(_arg(node, names, "inplace", False))
    kind = kind.rstrip("_")
    if inplace and not _inplace_is_safe(node):
        return None
    if kind == "hardtanh":
        lo, hi = _arg(node, names, "min_val", -1.0), _arg(node, names, "max_val", 1.0)
        return (QuantReLU6, {}) if (lo, hi) == (0.0, 6.0) else None
    if kind == "leaky_relu":
        slope = _arg(node, names, "negative_slope", 0.01)
        return (QuantLeakyReLU, {"negative_slope": slope}) if isinstance(slope, float) else None
    if kind == "gelu":
        approximate = _arg(node, names, "approximate", "none")
        return (QuantGELU, {"approximate": approximate}) if isinstance(approximate, str) else None
    cls = {"relu": QuantReLU, "relu6": QuantReLU6, "hardswish": QuantHardswish,
           "hardsigmoid": QuantHardsigmoid, "silu": QuantSiLU, "sigmoid": QuantSigmoid,
           "tanh": QuantTanh}[kind]  # fmt: skip
    return cls, {}


def _inplace_is_safe(node: fx.Node) -> bool:
    """An in-place call may become an out-of-place one when its result is used and its input
    is not read by anything after it."""
    if not node.users:
        return False
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    src = node.args[0]  # an fx.Node (checked by the caller)
    assert isinstance(src, fx.Node)
    return all(order[u] < order[node] for u in src.users if u is not node)


def _install(mod: nn.Module, graphs: dict[bool, fx.Graph], added: list[str]) -> None:
    """Run the rewritten graph(s) as ``mod.forward`` (instance attribute; the class is untouched)."""
    fns = {mode: type(fx.GraphModule(mod, g)).forward for mode, g in graphs.items()}
    train_fn = fns[True]
    eval_fn = fns.get(False, train_fn)

    @functools.wraps(type(mod).forward)
    def forward(self, *args, **kwargs):
        return (train_fn if self.training else eval_fn)(self, *args, **kwargs)

    forward.graph_forwards = {True: train_fn, False: eval_fn}  # type: ignore[attr-defined]  # read by wageubn.fuse.Tracer
    mod.forward = types.MethodType(forward, mod)
    mod.__dict__[_MARK] = tuple(added)


def undo_functional(model: nn.Module) -> None:
    """Restore every rewritten module's own ``forward`` and drop the modules the rewrite added."""
    for mod in list(model.modules()):
        added = mod.__dict__.pop(_MARK, None)
        if added is None:
            continue
        mod.__dict__.pop("forward", None)
        for name in added:
            delattr(mod, name)
