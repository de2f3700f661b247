"""Param groups by optimizer role, and the check that an optimizer's config is its model's.

``param_groups(model)`` reads each parameter's role off the layer that declares it
(``wageubn.core.roles``) and returns explicit groups, one per role in use::

    [{"params": [...], "role": "weight"}, {"params": [...], "role": "bn"},
     {"params": [...], "role": "float"}]

``QSGD.from_model(model, lr=...)`` builds the optimizer on them with the model's own config
(``wageubn.config_of``). ``QSGD(model.parameters(), config=...)`` is checked the same way against
the layers that hold the parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..config import WAGEUBNConfig
from ..core.roles import PARAMETER_ROLES, live_roles, parameter_roles

__all__ = [
    "OPTIMIZER_FIELDS",
    "check_agrees",
    "config_for",
    "differing_fields",
    "layer_configs",
    "listed",
    "param_groups",
    "parameter_roles",
    "tensors_of",
]

OPTIMIZER_FIELDS = (
    "grad", "bn_grad", "lr", "momentum", "update", "grad_rounding", "grad_range", "grad_scale",
)  # fmt: skip
"""The ``WAGEUBNConfig`` fields ``QSGD`` reads: an optimizer and a model whose configs agree on
these update the model's parameters onto the grids its layers assume."""


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """``model``'s parameters as one group per optimizer role (``"weight"``, ``"bn"``, ``"float"``;
    empty roles left out), each ``{"params": [...], "role": role}`` in ``named_parameters`` order.

    Pass them to ``QSGD`` (or add keys such as ``weight_decay`` per group first); ``QSGD.from_model``
    does both steps with the model's config."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"param_groups: model must be an nn.Module, got {type(model).__name__}")
    roles = parameter_roles(model)
    named = dict(model.named_parameters())
    by_role: dict[str, list[torch.Tensor]] = {r: [] for r in PARAMETER_ROLES}
    for name, role in roles.items():
        by_role[role].append(named[name])
    return [{"params": ps, "role": r} for r, ps in by_role.items() if ps]


def differing_fields(a: WAGEUBNConfig, b: WAGEUBNConfig) -> list[str]:
    """The ``OPTIMIZER_FIELDS`` on which ``a`` and ``b`` differ, as ``"name a_value vs b_value"``."""
    return [
        f"{f} {getattr(a, f)!r} vs {getattr(b, f)!r}"
        for f in OPTIMIZER_FIELDS
        if getattr(a, f) != getattr(b, f)
    ]


def check_agrees(config: WAGEUBNConfig, model_config: WAGEUBNConfig, where: str) -> None:
    """Raise ``ValueError`` when ``config`` (the optimizer's) would update the parameters of
    ``where`` (layers holding ``model_config``) differently from the model's own config."""
    diffs = differing_fields(config, model_config)
    if diffs:
        raise ValueError(
            f"QSGD: config {config.name!r} disagrees with the config {model_config.name!r} of "
            f"{where}: {'; '.join(diffs)} (optimizer vs model); leave config out to use the "
            "model's (QSGD.from_model(model, lr=...)), or quantize_ the model with the same config"
        )


def layer_configs(params: Iterable[torch.Tensor]) -> dict[int, tuple[str, WAGEUBNConfig]]:
    """``id(parameter) -> (layer description, layer config)`` for the parameters among ``params``
    that a live quantized layer declares a role for."""
    out: dict[int, tuple[str, WAGEUBNConfig]] = {}
    for pid, entry in live_roles(params).items():
        layer = entry.layer()
        config = getattr(layer, "config", None)
        if layer is not None and isinstance(config, WAGEUBNConfig):
            out[pid] = (type(layer).__name__, config)
    return out


def listed(item: Any) -> Any:
    """A param group whose ``params`` iterator is a list (read twice: here and by torch)."""
    if isinstance(item, dict) and "params" in item:
        ps = item["params"]
        if not isinstance(ps, torch.Tensor | set | list | tuple):  # torch refuses sets itself
            return {**item, "params": list(ps)}
    return item


def tensors_of(params: Any) -> list[torch.Tensor]:
    """The tensors of a list of parameters or param groups (as ``torch.optim.Optimizer`` reads it)."""
    if isinstance(params, torch.Tensor):
        return [params]
    out: list[Any] = []
    for item in params:
        if isinstance(item, dict):
            ps = item.get("params", [])
            out.extend([ps] if isinstance(ps, torch.Tensor) else ps)
        else:
            out.append(item)
    return [t for t in out if isinstance(t, torch.Tensor)]


def config_for(params: list[torch.Tensor], config: WAGEUBNConfig | None) -> WAGEUBNConfig:
    """``config``, checked against the quantized layers holding ``params``; without one, theirs
    (``paper`` when no quantized layer holds any of them)."""
    held = layer_configs(params)
    distinct: dict[tuple[Any, ...], tuple[str, WAGEUBNConfig]] = {}
    for layer, cfg in held.values():
        distinct.setdefault(tuple(getattr(cfg, f) for f in OPTIMIZER_FIELDS), (layer, cfg))
    if config is None:
        if len(distinct) > 1:
            (la, a), (lb, b) = list(distinct.values())[:2]
            raise ValueError(
                f"QSGD: the parameters' quantized layers disagree (a {la} and a {lb}: "
                f"{'; '.join(differing_fields(a, b))}); quantize_ the model with one config, or "
                "pass config="
            )
        return next(iter(distinct.values()))[1] if distinct else WAGEUBNConfig.preset("paper")
    for layer, cfg in distinct.values():
        check_agrees(config, cfg, f"the model's {layer} layers")
    return config
