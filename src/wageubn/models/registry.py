"""Model registry: ``create_model(name, ...)``, ``list_models()`` and ``model_info(name)``."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_IMAGE_SIZE: dict[str, int] = {}


def register_model(
    fn: Callable[..., nn.Module] | None = None, *, image_size: int | None = None
) -> Any:
    """Register a model constructor under its function name: ``@register_model`` or
    ``@register_model(image_size=32)`` (the side of the square images it is made for)."""

    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} is already registered")
        _REGISTRY[fn.__name__] = fn
        if image_size is not None:
            _IMAGE_SIZE[fn.__name__] = image_size
        return fn

    return register if fn is None else register(fn)


def list_models() -> list[str]:
    """Names accepted by ``create_model``, sorted."""
    return sorted(_REGISTRY)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (available: {', '.join(list_models())})")


def create_model(
    name: str, num_classes: int | None = None, in_channels: int | None = None, **kwargs
) -> nn.Module:
    """A float model by name (``quantize_`` turns it into a WAGEUBN model).

    ``num_classes`` / ``in_channels`` default to the model's own defaults (1000 classes for the
    ImageNet ResNets, 10 for the others; 3 input channels, 1 for ``small_cnn``).
    """
    _check_name(name)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"create_model: {key} must be a positive int, got {value!r}")
        kwargs[key] = value
    return _REGISTRY[name](**kwargs)


@dataclass(frozen=True)
class ModelInfo:
    """What ``wageubn list-models`` shows of a registered model with its default arguments."""

    name: str
    parameters: int
    """Number of parameters (weights, biases, BN gamma/beta)."""
    input_shape: tuple[int, ...] | None
    """(C, H, W) the model is made for (None: the constructor did not register an image size)."""
    num_classes: int | None


def model_info(name: str) -> ModelInfo:
    """Parameter count and input shape of ``name`` with its default arguments (built on the meta
    device: no memory, no initialisation cost)."""
    _check_name(name)
    fn = _REGISTRY[name]
    with torch.device("meta"):
        model = fn()
    defaults = {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    size = _IMAGE_SIZE.get(name)
    channels = defaults.get("in_channels")
    shape = (channels, size, size) if size is not None and channels is not None else None
    return ModelInfo(
        name=name,
        parameters=sum(p.numel() for p in model.parameters()),
        input_shape=shape,
        num_classes=defaults.get("num_classes"),
    )
