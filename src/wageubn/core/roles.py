"""Parameter roles: which parameters of a quantized layer the optimizer quantizes, and how.

Every quantized layer derives from ``QuantModule`` and declares the roles of its *own* parameters
in the class attribute ``PARAM_ROLES`` (parameter name -> ``"weight"`` or ``"bn"``); a parameter
it does not declare, and every parameter of any other module, is ``"float"``:

=========  ==========================================================  ======================
role       update by ``QSGD`` (docs/WAGEUBN.md §3)                     whose
=========  ==========================================================  ======================
weight     ``CQ(g, k_G, dr)``, 13-bit momentum, 24-bit storage           conv/linear weights
bn         ``Q(g, k_GBN)``, 13-bit momentum, 24-bit storage, no decay    norm γ/β, layer scale
float      ``torch.optim.SGD``'s arithmetic                              stem, head, biases ...
=========  ==========================================================  ======================

That class declaration is the one registry: a role is looked up by (module, parameter name) and
never stored on a tensor, so ``copy.deepcopy``, pickling and ``load_state_dict`` need nothing
re-tagged. ``parameter_roles(model)`` reads a model's roles off its modules.

``QSGD`` given bare parameters (``QSGD(model.parameters())``) has no module to ask, so it looks
the parameters up among the *live* quantized layers: every ``QuantModule`` instance — built,
copied or unpickled, all of which go through ``__new__`` — sits in a weak set from the moment it
exists until it is garbage or hands its parameters to a float module (``to_float``: ``release``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, NamedTuple, cast

import torch
from torch import nn

__all__ = [
    "PARAMETER_ROLES",
    "LiveRole",
    "QuantModule",
    "declared_roles",
    "generation",
    "live_roles",
    "parameter_roles",
    "quantized_layers",
    "release",
]

PARAMETER_ROLES = ("weight", "bn", "float")
"""The optimizer's roles, in the order ``wageubn.optim.param_groups`` lists its groups."""

_LIVE: weakref.WeakSet[QuantModule] = weakref.WeakSet()
_GENERATION = [0]  # bumped whenever a layer joins _LIVE or is released from it


class QuantModule:
    """Mixin of every quantized layer (``QuantConv2d``, ``QuantBatchNorm2d``, ``QuantReLU`` ...).

    ``PARAM_ROLES`` declares the optimizer role of the layer's own parameters; ``config`` (set by
    the layer) is its ``WAGEUBNConfig``. Listed before the ``torch.nn`` base:
    ``class QuantConv2d(QuantModule, nn.Conv2d)``."""

    PARAM_ROLES: ClassVar[Mapping[str, str]] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # __new__, not __init__: copy.deepcopy and pickle build instances without __init__
        self = super().__new__(cls)
        _LIVE.add(self)
        _GENERATION[0] += 1
        return self


def release(module: object) -> None:
    """Take ``module`` out of the live layers: it handed its parameters to a float module
    (``to_float``), whose roles are ``"float"`` from now on."""
    if isinstance(module, QuantModule) and module in _LIVE:
        _LIVE.discard(module)
        _GENERATION[0] += 1


def generation() -> int:
    """A number that changes whenever a quantized layer is created or released (a cache key:
    between two equal values no parameter has gained or lost a live layer's role)."""
    return _GENERATION[0]


def declared_roles(module: nn.Module) -> Mapping[str, str]:
    """The roles ``module`` declares for its own parameters (``{}`` for a non-quantized module)."""
    return type(module).PARAM_ROLES if isinstance(module, QuantModule) else {}


def _roles_by_id(model: nn.Module) -> dict[int, str]:
    """``id(parameter) -> role`` for every parameter some module of ``model`` declares."""
    roles: dict[int, str] = {}
    for module in model.modules():
        declared = declared_roles(module)
        for name, p in module._parameters.items():
            if p is not None and name in declared:
                roles.setdefault(id(p), declared[name])  # a shared tensor: its first declaration
    return roles


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """``{qualified parameter name: role}`` for every parameter of ``model`` (``named_parameters``
    order; a parameter shared by several modules appears once, under its first name)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"parameter_roles: model must be an nn.Module, got {type(model).__name__}")
    roles = _roles_by_id(model)
    return {name: roles.get(id(p), "float") for name, p in model.named_parameters()}


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, layer)`` of every quantized layer in ``model`` (``named_modules`` order)."""
    for name, module in model.named_modules():
        if isinstance(module, QuantModule):
            yield name, cast(nn.Module, module)  # a QuantModule is always an nn.Module too


class LiveRole(NamedTuple):
    """A parameter of a live quantized layer: its role and the layer that declares it."""

    parameter: weakref.ReferenceType[torch.Tensor]
    role: str
    layer: weakref.ReferenceType[QuantModule]


def live_roles(params: Iterable[torch.Tensor] | None = None) -> dict[int, LiveRole]:
    """``id(parameter) -> LiveRole`` for the parameters the live quantized layers declare
    (only those in ``params`` when given). An entry kept across garbage collections is only
    valid while ``entry.parameter() is p``: ids are reused."""
    wanted = None if params is None else {id(p) for p in params}
    found: dict[int, LiveRole] = {}
    for layer in list(_LIVE):
        declared = type(layer).PARAM_ROLES
        if not declared:
            continue
        for name, p in layer._parameters.items():  # type: ignore[attr-defined]
            if p is None or name not in declared or (wanted is not None and id(p) not in wanted):
                continue
            if id(p) not in found:
                found[id(p)] = LiveRole(weakref.ref(p), declared[name], weakref.ref(layer))
    return found
