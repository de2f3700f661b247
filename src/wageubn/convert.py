"""``quantize_(model, config)`` / ``to_float_(model)``: in-place module swap on any ``nn.Module`` tree.

========================  ===========================  ========================================
float module              quantized module             what the swap adds
========================  ===========================  ========================================
``nn.Conv2d``             ``QuantConv2d``              W = QC forward, E2 = FQ on the output grad
``nn.Conv1d``             ``QuantConv1d``              the same
``nn.Linear``             ``QuantLinear``              the same
``nn.Embedding``          ``QuantEmbedding``           rows of QC(W); E2 on the output gradient
``nn.MultiheadAttention`` ``QuantMultiheadAttention``  projections as above; Q·Kᵀ and P·V with
                                                       A operands and E2; softmax float
``nn.BatchNorm2d``        ``QuantBatchNorm2d``         μ, σ, x̂, γ, β quantized
``nn.BatchNorm1d``        ``QuantBatchNorm1d``         the same
``nn.LayerNorm``          ``QuantLayerNorm``           the same, statistics per row
``nn.GroupNorm``          ``QuantGroupNorm``           the same, statistics per group
``LayerNorm2d``           ``QuantLayerNorm2d``         torchvision's (ConvNeXt), per pixel
``nn.ReLU``               ``QuantReLU``                A = Q forward, E1 = SQ on the gradient
``nn.ReLU6`` …            ``QuantReLU6`` …             the same for ReLU6, LeakyReLU, Hardswish,
                                                       Hardsigmoid, SiLU, GELU, Sigmoid, Tanh
========================  ===========================  ========================================

As in the released code, the first ``Conv2d`` (the stem) and the last ``Linear`` (the classifier)
in registration order stay float unless ``config.quantize_stem`` / ``config.quantize_head`` say
otherwise. Containers and shape-only modules (pooling, flatten, dropout, identity, torchvision's
``StochasticDepth`` and ``Permute``) need no swap; the children of a swapped attention are part of it.
Any other module that ``filter_fn`` selects has no quantized counterpart, and with
``arithmetic="int8"`` a convolution padded other than by zeros (``padding_mode`` reflect, replicate,
circular) or by a string (``"same"``) cannot run: ``quantize_`` raises one
``UnsupportedModuleError`` naming every such module (path, type, reason) before changing anything.
Nothing is skipped silently.

``config_of`` / ``config_or_none`` (the config a converted model's layers hold) live in
``wageubn.config`` and are re-exported here.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from .config import WAGEUBNConfig, config_of, config_or_none
from .functional import FloatCall, plan_functional, undo_functional
from .fuse import fuse_bn_relu_
from .nn import QuantBatchNorm2d, QuantConv2d, QuantLinear, QuantReLU
from .nn.activations import QUANT_ACTIVATIONS
from .nn.attention import QuantMultiheadAttention, attention_problem
from .nn.blocks import QuantCNBlock
from .nn.layers import QuantLayer
from .nn.norms import QuantBatchNorm1d, QuantGroupNorm, QuantLayerNorm, QuantLayerNorm2d
from .nn.products import QuantConv1d, QuantEmbedding, embedding_problem
from .nn.swin import QuantShiftedWindowAttention, QuantShiftedWindowAttentionV2
from .quant import direct_quantize

__all__ = [
    "FLOAT_PARAMETERS",
    "QUANT_MODULES",
    "FloatCall",
    "UnsupportedModuleError",
    "config_of",
    "config_or_none",
    "float_calls",
    "quantize_",
    "to_float_",
]

QUANT_MODULES: dict[type[nn.Module], type[QuantLayer]] = {
    nn.Conv2d: QuantConv2d,
    nn.Conv1d: QuantConv1d,
    nn.Linear: QuantLinear,
    nn.Embedding: QuantEmbedding,
    nn.MultiheadAttention: QuantMultiheadAttention,
    nn.BatchNorm2d: QuantBatchNorm2d,
    nn.BatchNorm1d: QuantBatchNorm1d,
    nn.LayerNorm: QuantLayerNorm,
    nn.GroupNorm: QuantGroupNorm,
    nn.ReLU: QuantReLU,
    **QUANT_ACTIVATIONS,
}
"""float class → quantized class. torchvision's ``LayerNorm2d`` and ``CNBlock`` (ConvNeXt) and
``ShiftedWindowAttention(V2)`` (Swin) are added when a model could hold them (their torchvision
module imported): importing wageubn imports no torchvision."""
_FLOAT_OF = {q: f for f, q in QUANT_MODULES.items()}


# module that defines the float class -> (class name, quantized class)
_OPTIONAL: dict[str, list[tuple[str, type[QuantLayer]]]] = {
    "torchvision.models.convnext": [("LayerNorm2d", QuantLayerNorm2d), ("CNBlock", QuantCNBlock)],
    "torchvision.models.swin_transformer": [
        ("ShiftedWindowAttention", QuantShiftedWindowAttention),
        ("ShiftedWindowAttentionV2", QuantShiftedWindowAttentionV2),
    ],
}


def _register_optional() -> None:
    for module_name, pairs in _OPTIONAL.items():
        module = sys.modules.get(module_name)
        for name, qcls in pairs:
            fcls = getattr(module, name, None)
            if fcls is not None and fcls not in QUANT_MODULES:
                QUANT_MODULES[fcls] = qcls
                _FLOAT_OF[qcls] = fcls


# Modules that only move, pick or drop values already on a grid: nothing to quantize.
_TRANSPARENT = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Identity,
)
# the same, for classes of optional packages (matched by name: nothing is imported for them)
_TRANSPARENT_NAMES = {
    "torchvision.ops.stochastic_depth.StochasticDepth",  # drop path: dropout of whole samples
    "torchvision.ops.misc.Permute",
    "torchvision.models.maxvit.WindowPartition",
    "torchvision.models.maxvit.WindowDepartition",
    "torchvision.models.maxvit.SwapAxes",
}

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

FLOAT_PARAMETERS: dict[str, tuple[str, ...]] = {
    "torchvision.models.vision_transformer.VisionTransformer": ("class_token",),
    "torchvision.models.vision_transformer.Encoder": ("pos_embedding",),
    "torchvision.models.maxvit.RelativePositionalMultiHeadAttention": (
        "relative_position_bias_table",
    ),
    "torchvision.models.swin_transformer.ShiftedWindowAttention": ("relative_position_bias_table",),
    "torchvision.models.swin_transformer.ShiftedWindowAttentionV2": ("logit_scale",),
}
"""Own parameters of known blocks that stay float, as biases do (added to activations, not
multiplied): a class token, a position embedding, a relative-position bias table. A class of your
own declares them as ``WAGEUBN_FLOAT_PARAMETERS = ("name", ...)``. Any other parameter of a module
without a quantized counterpart is an error."""

FilterFn = Callable[[nn.Module, str], bool]

_FLOAT_CALLS = "_wageubn_float_calls"  # the model attribute quantize_ leaves for float_calls

log = logging.getLogger(__name__)


class UnsupportedModuleError(NotImplementedError):
    """A module selected for quantization has no quantized counterpart."""


def _parent(model: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    path, _, name = fqn.rpartition(".")
    return (model.get_submodule(path) if path else model), name


def _stem_and_head(model: nn.Module) -> tuple[str | None, str | None]:
    """The paths of the first ``Conv2d`` and the last ``Linear`` in registration order."""
    convs = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, QuantConv2d)]
    linears = [n for n, m in model.named_modules() if type(m) in (nn.Linear, QuantLinear)]
    return (convs[0] if convs else None), (linears[-1] if linears else None)


def _float_parameters(mod: nn.Module) -> tuple[str, ...]:
    declared = getattr(type(mod), "WAGEUBN_FLOAT_PARAMETERS", None)
    if declared is None:
        declared = FLOAT_PARAMETERS.get(_qualname(mod), ())
    own = dict(mod.named_parameters(recurse=False))
    return tuple(n for n in declared if n in own)


def quantize_(
    model: nn.Module,
    config: WAGEUBNConfig | str = "paper",
    filter_fn: FilterFn | None = None,
    *,
    functional: bool = True,
) -> nn.Module:
    """Swap every supported module of ``model`` for its WAGEUBN counterpart, in place; returns ``model``.

    ``config`` is a ``WAGEUBNConfig`` or a preset name. ``filter_fn(module, fqn) -> bool`` selects
    the modules to convert (default: all). Parameters and buffers are carried over as the same
    objects; quantized conv/linear weights are snapped to the ``weight_init`` grid and BN γ/β to
    the ``update`` grid, so the stored values lie on their grids from the first step.

    ``functional=True`` also quantizes the activations that ``forward`` code calls as functions
    (``F.relu``, ``F.gelu``, ``x.sigmoid()``, ...; ``wageubn.functional``); every call that stays
    float (functional products, residual sums, untraceable modules ...) is listed by
    ``float_calls(model)`` and summarized in the log.
    """
    if isinstance(config, str):
        config = WAGEUBNConfig.preset(config)
    if not isinstance(config, WAGEUBNConfig):
        raise TypeError(
            f"quantize_: config must be a WAGEUBNConfig or a preset name, got {type(config).__name__}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_: model must be an nn.Module, got {type(model).__name__}")
    if type(model) in QUANT_MODULES or type(model) in _FLOAT_OF:
        raise TypeError(
            f"quantize_: the model itself is a single {type(model).__name__}; "
            "wrap it in nn.Sequential so it can be swapped in place"
        )
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError("quantize_: filter_fn must be callable as filter_fn(module, fqn) -> bool")
    _register_optional()
    stem, head = _stem_and_head(model)
    keep_float = set()
    if stem is not None and not config.quantize_stem:
        keep_float.add(stem)
    if head is not None and not config.quantize_head:
        keep_float.add(head)

    # Every module is checked before anything is swapped: all problems are reported together and
    # a model that cannot be converted is left as it was.
    swaps: list[tuple[str, nn.Module]] = []
    reconfigure: list[QuantLayer] = []
    unsupported: list[str] = []
    inside: list[str] = []  # modules converted as a whole (attention): their children come along
    for fqn, mod in model.named_modules():
        if any(fqn.startswith(p + ".") for p in inside):
            continue
        if filter_fn is not None and not filter_fn(mod, fqn):
            continue
        if type(mod) in _FLOAT_OF:  # already quantized: re-configure
            problem = _problem(mod, config)
            if problem:
                unsupported.append(f"{fqn or 'the model'} {problem}")
            reconfigure.append(cast(QuantLayer, mod))
            if getattr(type(mod), "OWNS_CHILDREN", False):
                inside.append(fqn)
            continue
        if fqn in keep_float:
            continue
        if type(mod) in QUANT_MODULES:
            problem = _problem(mod, config)
            if problem:
                unsupported.append(f"{fqn or 'the model'} {problem}")
            else:
                swaps.append((fqn, mod))
            if getattr(QUANT_MODULES[type(mod)], "OWNS_CHILDREN", False):
                inside.append(fqn)
            continue
        own = {n for n, _ in mod.named_parameters(recurse=False)}
        has_own_params = bool(own - set(_float_parameters(mod)))
        if not has_own_params and (
            isinstance(mod, _TRANSPARENT + _CONTAINERS) or _qualname(mod) in _TRANSPARENT_NAMES
        ):
            continue
        if not has_own_params and mod._modules:  # a user block: its children are visited
            continue
        what = "has parameters of its own and " if has_own_params else ""
        unsupported.append(
            f"{fqn or 'the model'} is a {_qualname(mod)}, which {what}has no quantized counterpart"
        )
    quantized = {id(m): type(m) for m in reconfigure}
    quantized.update((id(m), QUANT_MODULES[type(m)]) for _, m in swaps)
    plan = plan_functional(
        model,
        convertible=lambda m: type(m) in QUANT_MODULES or type(m) in _FLOAT_OF,
        quantized_roles=lambda m: getattr(quantized.get(id(m)), "PARAM_ROLES", {}),
        selected=lambda m, p: filter_fn is None or bool(filter_fn(m, p)),
        float_parameters=_float_parameters,
    )
    unsupported.extend(plan.problems)
    if unsupported:
        many = f"{len(unsupported)} modules cannot be converted: " if len(unsupported) > 1 else ""
        raise UnsupportedModuleError(
            f"quantize_: {many}{'; '.join(unsupported)}; exclude them with filter_fn "
            f"(supported: {', '.join(t.__name__ for t in QUANT_MODULES)})"
        )
    for mod in reconfigure:
        mod.config = config
    swaps = [(fqn, QUANT_MODULES[type(mod)].from_float(mod, config)) for fqn, mod in swaps]
    for fqn, new in swaps:
        parent, name = _parent(model, fqn)
        setattr(parent, name, new)
        _snap_to_grid(new, config)
    if functional:
        plan.apply(config)
    calls = plan.float_calls + (
        [] if functional else
        [FloatCall(rw.path, call, "activation", "functional=False: not quantized")
         for rw in plan.rewrites for call in rw.calls]
    )  # fmt: skip
    setattr(model, _FLOAT_CALLS, calls)  # an attribute of the model: float_calls(model) reads it
    _log_float_calls(calls)
    fuse_bn_relu_(model)  # speed and memory only: BN computes the ReLU after it where it may
    return model


def float_calls(model: nn.Module) -> list[FloatCall]:
    """What stays float in a model converted by ``quantize_``, beyond what the contract keeps float
    by module (stem, head): functional products and normalizations, softmax, residual sums,
    elementwise products, pooling, float parameters, modules ``torch.fx`` cannot trace."""
    if not hasattr(model, _FLOAT_CALLS):
        raise ValueError("float_calls: the model was not converted by quantize_")
    return list(getattr(model, _FLOAT_CALLS))


_LOUD = ("product", "activation", "normalization", "untraced", "other")


def _log_float_calls(calls: list[FloatCall]) -> None:
    loud = [c for c in calls if c.kind in _LOUD]
    if loud:
        shown = "; ".join(str(c) for c in loud[:8]) + ("; ..." if len(loud) > 8 else "")
        log.warning(
            "quantize_: %d call(s) in forward code stay float (wageubn.convert.float_calls(model) "
            "lists them all): %s", len(loud), shown,
        )  # fmt: skip
    quiet = len(calls) - len(loud)
    if quiet:
        log.info(
            "quantize_: %d float sums/products/pooling/parameter calls, as the contract", quiet
        )


def _qualname(mod: nn.Module) -> str:
    return f"{type(mod).__module__}.{type(mod).__name__}"


def _problem(mod: nn.Module, config: WAGEUBNConfig) -> str | None:
    """Why ``mod`` cannot be converted with ``config`` (None when it can)."""
    if isinstance(mod, nn.MultiheadAttention):
        return attention_problem(mod)
    if isinstance(mod, nn.Embedding):
        return embedding_problem(mod, config)
    return _int8_conv_problem(mod, config)


def _int8_conv_problem(mod: nn.Module, config: WAGEUBNConfig) -> str | None:
    """Why ``arithmetic="int8"`` cannot run this convolution (None when it can): the integer
    convolution pads with zeros by a number of pixels, nothing else."""
    if config.arithmetic != "int8" or not isinstance(mod, nn.Conv2d | nn.Conv1d):
        return None
    kind = type(mod).__name__.removeprefix("Quant")
    if mod.padding_mode != "zeros":
        return (
            f"is a {kind} with padding_mode={mod.padding_mode!r}, which arithmetic='int8' cannot "
            "run (zero padding only); use padding_mode='zeros' or a preset with simulated "
            "arithmetic"
        )
    if isinstance(mod.padding, str):
        return (
            f"is a {kind} with padding={mod.padding!r}, which arithmetic='int8' cannot run; give "
            "the padding in pixels (e.g. padding=1 for a 3x3 kernel)"
        )
    return None


@torch.no_grad()
def _snap_to_grid(mod: nn.Module, config: WAGEUBNConfig) -> None:
    """Quantized weights (role ``"weight"``) onto the ``weight_init`` grid, normalization
    γ/β (role ``"bn"``) onto the ``update`` grid."""
    grids = {"weight": config.weight_init, "bn": config.update}
    for m in mod.modules():
        roles = getattr(type(m), "PARAM_ROLES", {})
        for name, p in m.named_parameters(recurse=False):
            bits = grids.get(roles.get(name, ""))
            if bits is not None:
                p.copy_(direct_quantize(p, bits))


def to_float_(model: nn.Module) -> nn.Module:
    """Undo ``quantize_``: every quantized module back to its ``torch.nn`` class (same parameters)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_float_: model must be an nn.Module, got {type(model).__name__}")
    _register_optional()
    swaps: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for fqn, m in model.named_modules():
        if type(m) in _FLOAT_OF and not any(fqn.startswith(p + ".") for p in inside):
            swaps.append((fqn, m.to_float()))
            if getattr(type(m), "OWNS_CHILDREN", False):
                inside.append(fqn)
    for fqn, new in swaps:
        if fqn == "":
            raise TypeError("to_float_: the model itself is a quantized layer; use its to_float()")
        parent, name = _parent(model, fqn)
        setattr(parent, name, new)
    undo_functional(model)
    model.__dict__.pop(_FLOAT_CALLS, None)
    return model
