"""Count the arithmetic of one real training step from the operations PyTorch dispatches.

``OpCounter`` is a ``TorchDispatchMode``: every aten op (and the oneDNN custom ops
``torch.ops.onednn.*``, and ``aten._int_mm``) passes through it below autograd, with the tensors
it actually received. Each op is turned into counted events by :func:`classify`
(``wageubn.profile.optable``: products as multiply-accumulates typed by operand and accumulator
dtypes, elementwise ops as adds or multiplies, data movement tallied, not costed).

The "as quantized" view (docs/profile.md) re-types only the products of quantized layers: each
``QuantConv2d``/``QuantLinear`` call contributes its three products (forward ``A×W``, input
gradient ``E2×W``, weight gradient ``E2×A``) once each, at the config's bit widths, in place of
whatever its kernels executed. Products dispatched inside a quantized layer are recognised by a
module-hook scope in the forward pass and, in the backward pass, by the autograd node running
them (``torch._C._current_autograd_node``) being one that the layer's forward created.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..nn import QuantConv2d, QuantLinear
from .energy import OpType
from .optable import classify, dtype_label, grid_bits, on_grid

__all__ = ["OpCounter", "classify", "dtype_label", "grid_bits"]


@dataclass
class LayerCall:
    """One call of a quantized conv/linear layer: its three products and their roles."""

    name: str
    kind: str
    products: int  # multiply-accumulates of each of the three products
    terms: dict[str, int]  # products summed per output element, per direction
    bits: dict[str, int | None]  # "A", "W", "E2" → bits (None: float)
    needs: dict[str, bool]  # "input_grad" / "weight_grad" were requested
    backward_ran: bool = False


@dataclass
class SavedTensor:
    dtype: torch.dtype
    nbytes: int
    numel: int
    bits: int | None  # grid_bits of the values
    in_layer: bool  # saved inside a quantized conv/linear layer's forward


class OpCounter(TorchDispatchMode):
    """Counts every dispatched op (see :func:`classify`) into ``executed`` and ``quantized``
    (``(phase, direction, OpType) -> count``), ``uncosted`` (op name -> elements), ``layers``
    and ``saved``. Install :meth:`track` on the model, set ``phase`` as the step goes, use
    :meth:`pack` as a ``saved_tensors_hooks`` pack hook, and call :meth:`finish` at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.executed: Counter = Counter()
        self.quantized: Counter = Counter()
        self.uncosted: Counter = Counter()
        self.layers: list[LayerCall] = []
        self.saved: dict[tuple, SavedTensor] = {}
        self.phase = "forward"
        self._paused = False
        self._scope: list[LayerCall] = []
        self._owner: dict[Any, LayerCall] = {}  # autograd node -> the layer call that made it
        self._handles: list[Any] = []
        self._param_storages: set[int] = set()

    # -- the dispatch hook -------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._paused:
            return out
        owner = None
        if self.phase == "forward" and self._scope:
            owner = self._scope[-1]
        elif self.phase == "backward":
            owner = self._owner.get(torch._C._current_autograd_node())
        for ev in classify(func, args, kwargs, out):
            if ev.what == "uncosted":
                self.uncosted[ev.name] += ev.count
                continue
            direction = ev.direction or (self.phase if ev.what == "mac" else "")
            key = (self.phase, direction, ev.type)
            self.executed[key] += ev.count
            if not (ev.what == "mac" and owner is not None):
                self.quantized[key] += ev.count
        return out

    # -- quantized layers: scope in forward, owned autograd nodes in backward -------------------
    def track(self, model: nn.Module) -> None:
        """Hook every ``QuantConv2d``/``QuantLinear`` of ``model`` (undone by :meth:`untrack`)."""
        self._param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        for name, mod in model.named_modules():
            if isinstance(mod, (QuantConv2d, QuantLinear)):
                pre = mod.register_forward_pre_hook(self._enter(name or type(mod).__name__))
                post = mod.register_forward_hook(self._exit)
                self._handles += [pre, post]

    def untrack(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._owner.clear()

    def _enter(self, name: str):
        def hook(mod: QuantConv2d | QuantLinear, inputs: tuple) -> None:
            cfg = mod.config
            a_bits = cfg.activation
            if a_bits is not None and cfg.arithmetic != "int8":
                # simulated arithmetic takes the input as it comes: count it at A bits only if
                # it lies on the A grid (the output of a QuantReLU does; a raw image does not)
                with self.paused():
                    a_bits = a_bits if on_grid(inputs[0], a_bits) else None
            kind = "conv" if isinstance(mod, QuantConv2d) else "linear"
            call = LayerCall(name, kind, 0, {}, {"A": a_bits, "W": cfg.weight, "E2": cfg.error2},
                             {"input_grad": inputs[0].requires_grad,
                              "weight_grad": mod.weight.requires_grad})  # fmt: skip
            self._scope.append(call)

        return hook

    def _exit(self, mod: QuantConv2d | QuantLinear, inputs: tuple, output: torch.Tensor) -> None:
        call = self._scope.pop()
        w = mod.weight
        if isinstance(mod, QuantConv2d):  # ([N,] O, Ho, Wo) out, (O, C/g, kh, kw) weight
            o, ho, wo = output.shape[-3:]
            n = output.numel() // (o * ho * wo)
            taps = w.shape[2] * w.shape[3]
            call.products = output.numel() * w.shape[1] * taps
            call.terms = {"forward": w.shape[1] * taps,
                          "input_grad": o // mod.groups * taps, "weight_grad": n * ho * wo}  # fmt: skip
        else:  # (..., K) in, (O, K) weight
            rows = output.numel() // w.shape[0]
            call.products = rows * w.shape[0] * w.shape[1]
            call.terms = {"forward": w.shape[1], "input_grad": w.shape[0], "weight_grad": rows}
        self.layers.append(call)
        node = output.grad_fn
        if node is None:
            return
        stop = {t.grad_fn for t in inputs if isinstance(t, torch.Tensor) and t.grad_fn is not None}
        todo: list[torch.autograd.graph.Node | None] = [node]
        while todo:
            cur = todo.pop()
            if cur is None or cur in stop or cur in self._owner:
                continue
            self._owner[cur] = call
            todo.extend(nxt for nxt, _ in cur.next_functions)

        def ran(grad_outputs):
            call.backward_ran = True

        node.register_prehook(ran)

    # -- saved tensors ------------------------------------------------------------------------
    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """``saved_tensors_hooks`` pack hook: record ``t`` once per storage, skip parameters."""
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        key = (t.device.type, ptr)
        if ptr not in self._param_storages and key not in self.saved:
            with self.paused():
                bits = grid_bits(t)
            nbytes = storage.nbytes()
            self.saved[key] = SavedTensor(t.dtype, nbytes, nbytes // t.element_size(), bits,
                                          bool(self._scope))  # fmt: skip
        return t

    class _Paused:
        def __init__(self, counter: OpCounter) -> None:
            self.counter = counter

        def __enter__(self) -> None:
            self.prev, self.counter._paused = self.counter._paused, True

        def __exit__(self, *exc) -> None:
            self.counter._paused = self.prev

    def paused(self) -> OpCounter._Paused:
        """Within this, the counter's own measurements are not counted."""
        return OpCounter._Paused(self)

    # -- the quantized view of the layers ------------------------------------------------------
    def finish(self) -> None:
        """Add each quantized layer's products, by role, to the quantized view."""
        for call in self.layers:
            for direction, (x, y) in _ROLES.items():
                if direction != "forward" and not (call.backward_ran and call.needs[direction]):
                    continue
                t = role_mac_type(call.bits[x], call.bits[y], call.terms[direction], x, y)
                phase = "forward" if direction == "forward" else "backward"
                self.quantized[(phase, direction, t)] += call.products


_ROLES = {"forward": ("A", "W"), "input_grad": ("E2", "W"), "weight_grad": ("E2", "A")}


def role_mac_type(a: int | None, b: int | None, terms: int, ra: str, rb: str) -> OpType:
    """The MAC type of a product of roles with ``a`` and ``b`` bits (``None``: float32).

    Accumulator: int32 for products of two operands of at most 8 bits each (the paper's int8 ×
    int8 → int32; a kernel splits longer sums into int32 chunks); otherwise int32 when the
    worst case ``(a−1) + (b−1) + ⌈log2 terms⌉ ≤ 31`` bits fits, else int64.
    """
    if a is None or b is None:
        return OpType.mac("float", 32, 32, 32, "fp32×fp32→fp32")
    need = (a - 1) + (b - 1) + math.ceil(math.log2(max(terms, 1)))
    acc = 32 if (a <= 8 and b <= 8) or need <= 31 else 64
    return OpType.mac("int", a, b, acc, f"{a}b×{b}b→int{acc} ({ra}×{rb})")
