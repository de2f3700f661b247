"""Model registry: ``create_model(name, ...)`` and ``list_models()``."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

__all__ = ["create_model", "list_models", "register_model"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model constructor under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names accepted by ``create_model``, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str, num_classes: int | None = None, in_channels: int | None = None, **kwargs
) -> nn.Module:
    """A float model by name (``quantize_`` turns it into a WAGEUBN model).

    ``num_classes`` / ``in_channels`` default to the model's own defaults (1000 classes for the
    ImageNet ResNets, 10 for the others; 3 input channels, 1 for ``small_cnn``).
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (available: {', '.join(list_models())})")
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"create_model: {key} must be a positive int, got {value!r}")
        kwargs[key] = value
    return _REGISTRY[name](**kwargs)
