"""Fusing a ``QuantBatchNorm2d`` with the ``QuantReLU`` it feeds (called by ``quantize_``).

A BN whose output goes to a ReLU and nowhere else can compute that activation itself: one
autograd node instead of two, one pass over the data less each way, and nothing kept for backward
but the BN's own input (the ReLU mask is recomputed). Which BNs qualify is read from the model's
``forward`` with ``torch.fx`` (symbolic tracing, quantized layers as leaves): a BN qualifies when
every call of it has exactly one user, a call of the same ``QuantReLU``. Shared ReLU modules are
fine (the ReLU passes through only what its fused BN marked). A model that cannot be traced is
left unfused, with a debug log line: fusion changes speed and memory, never values.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from torch import fx, nn

from . import nn as qnn
from .nn import QuantBatchNorm2d, QuantReLU

__all__ = ["Tracer", "bn_relu_pairs", "fuse_bn_relu_"]

log = logging.getLogger(__name__)

# every quantized layer of wageubn.nn is one call in a traced graph
_LEAVES = tuple(getattr(qnn, name) for name in qnn.__all__ if name.startswith("Quant"))


class Tracer(fx.Tracer):
    """``torch.fx`` symbolic tracing with every quantized layer (and, as usual, every
    ``torch.nn`` module) as a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, module_qualified_name)

    def trace(self, root, concrete_args=None):
        # torch.fx traces type(root).forward; a root whose forward wageubn.functional rewrote
        # (an instance attribute) is traced through that rewritten forward instead, on a view of
        # the same module (shared __dict__: the same children, parameters and buffers)
        graphs = getattr(getattr(root, "__dict__", {}).get("forward"), "graph_forwards", None)
        if graphs is not None:
            cls = type(root)
            view: Any = object.__new__(
                type(cls.__name__, (cls,), {"forward": graphs[root.training]})
            )
            view.__dict__ = root.__dict__
            root = view
        return super().trace(root, concrete_args)


def bn_relu_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(bn_path, relu_path)`` for every BN of ``model`` that feeds only one ``QuantReLU``.

    Raises whatever ``torch.fx`` raises for a model it cannot trace."""
    graph = Tracer().trace(model)
    modules = dict(model.named_modules())
    targets: dict[str, set[str | None]] = defaultdict(set)
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), QuantBatchNorm2d):
            continue
        users = list(node.users)
        relu = None
        if len(users) == 1 and users[0].op == "call_module":
            if isinstance(modules.get(users[0].target), QuantReLU):
                relu = users[0].target
        targets[node.target].add(relu)
    return sorted(
        (bn, next(iter(relus)))  # type: ignore[misc]
        for bn, relus in targets.items()
        if len(relus) == 1 and None not in relus
    )


def fuse_bn_relu_(model: nn.Module) -> int:
    """Fuse every qualifying BN of ``model`` with its ReLU (and unfuse the others), in place.

    Returns how many BNs were fused; 0 when the model cannot be traced."""
    bns = [m for m in model.modules() if isinstance(m, QuantBatchNorm2d)]
    for layer in bns:
        layer.fuse_relu(None)
    if not bns:
        return 0
    try:
        pairs = bn_relu_pairs(model)
    except Exception as err:  # fx cannot trace every model; fusion is only an optimization
        log.debug("BN+ReLU fusion skipped: %s cannot be traced (%s)", type(model).__name__, err)
        return 0
    for bn_path, relu_path in pairs:
        bn = model.get_submodule(bn_path)
        relu = model.get_submodule(relu_path)
        assert isinstance(bn, QuantBatchNorm2d) and isinstance(relu, QuantReLU)
        bn.fuse_relu(relu)
    return len(pairs)
