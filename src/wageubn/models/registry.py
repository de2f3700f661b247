"""Model registry: ``create_model(name, ...)``, ``list_models()`` and ``model_info(name)``.

``create_model`` also builds any importable model: ``"torchvision:mobilenet_v2"`` (a torchvision
builder by name) or ``"package.module:factory"`` (any callable returning an ``nn.Module``; the
part after the colon may be dotted, ``"pkg.mod:Class.build"``). ``num_classes`` and
``in_channels`` are passed when the factory takes them; otherwise a first convolution made for
other input channels is rebuilt for ``in_channels`` (freshly initialized), and a last linear
layer with another number of outputs is an error (the factory cannot be told the classes).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "ModelInfo",
    "create_model",
    "is_external",
    "list_models",
    "model_info",
    "register_model",
    "resolve_factory",
]

log = logging.getLogger(__name__)

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


def is_external(name: str) -> bool:
    """``"module:factory"`` names an importable model rather than a registered one."""
    return isinstance(name, str) and ":" in name


def resolve_factory(name: str) -> Callable[..., nn.Module]:
    """The callable that ``"module:factory"`` names (``"torchvision:NAME"``: torchvision's
    builder ``NAME``); ``ValueError`` naming what is missing and how to fix it."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(
            f"model {name!r}: write an importable model as 'package.module:factory' "
            "(e.g. 'torchvision:mobilenet_v2' or 'torchvision.models:VisionTransformer')"
        )
    if module_name == "torchvision":
        try:
            import torchvision
        except ImportError:
            raise ValueError(
                f"model {name!r} needs torchvision: pip install 'torch-wageubn[vision]'"
            ) from None
        builders = torchvision.models.list_models()
        if attr not in builders:
            close = difflib.get_close_matches(attr, builders, n=1)
            hint = f"; did you mean 'torchvision:{close[0]}'?" if close else ""
            raise ValueError(f"model {name!r}: torchvision has no model {attr!r}{hint}")
        return torchvision.models.get_model_builder(attr)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"model {name!r}: cannot import {module_name!r} ({exc}); is it installed, or on "
            "PYTHONPATH?"
        ) from None
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = ".".join([module_name, *attr.split(".")[:i]])
            raise ValueError(f"model {name!r}: {where} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model {name!r}: {attr} is a {type(obj).__name__}, not a callable")
    return obj


def _accepts(fn: Callable[..., Any], key: str) -> bool:
    """Whether ``fn`` takes ``key``: a parameter of that name; for ``num_classes`` also a
    ``**kwargs`` (torchvision's builders pass it on to the model class)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read: do not guess
        return False
    var = key == "num_classes"
    return any(p.name == key or (var and p.kind is p.VAR_KEYWORD) for p in params)


def _create_external(
    name: str, num_classes: int | None, in_channels: int | None, kwargs: dict[str, Any]
) -> nn.Module:
    fn = resolve_factory(name)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is not None and key not in kwargs and _accepts(fn, key):
            kwargs[key] = value
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} returned a {type(model).__name__}, not an nn.Module")
    if in_channels is not None and "in_channels" not in kwargs:
        _adapt_input_channels(model, name, in_channels)
    if num_classes is not None and "num_classes" not in kwargs:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if linears and linears[-1].out_features != num_classes:
            raise ValueError(
                f"model {name!r} does not take num_classes and its last Linear has "
                f"{linears[-1].out_features} outputs, but the data have {num_classes} classes; "
                "give the factory a num_classes argument (or set it in model.kwargs)"
            )
    return model


def _adapt_input_channels(model: nn.Module, name: str, in_channels: int) -> None:
    """Rebuild the first convolution for ``in_channels`` when it was made for others."""
    first = next(((p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].in_channels == in_channels:
        return
    path, conv = first
    if conv.groups != 1:
        raise ValueError(
            f"model {name!r}: its first convolution {path} is grouped; it cannot be rebuilt for "
            f"{in_channels} input channels"
        )
    # torch types a Conv2d's own kernel_size ... dilation as tuple[int, ...]; they are pairs
    new = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
        conv.dilation, 1, conv.bias is not None, conv.padding_mode,  # type: ignore[arg-type]
        device=conv.weight.device, dtype=conv.weight.dtype,
    )  # fmt: skip
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)
    log.info("%s: first convolution %s rebuilt for %d input channels", name, path, in_channels)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint} (available: {', '.join(list_models())}, or an "
            "importable 'package.module:factory' such as 'torchvision:mobilenet_v2')"
        )


def create_model(
    name: str, num_classes: int | None = None, in_channels: int | None = None, **kwargs
) -> nn.Module:
    """A float model by name (``quantize_`` turns it into a WAGEUBN model).

    ``name`` is registered (``list_models()``) or importable (``"torchvision:mobilenet_v2"``,
    ``"package.module:factory"``; see the module docstring). ``num_classes`` / ``in_channels``
    default to the model's own defaults (1000 classes for the ImageNet ResNets, 10 for the
    others; 3 input channels, 1 for ``small_cnn``).
    """
    if not is_external(name):
        _check_name(name)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"create_model: {key} must be a positive int, got {value!r}")
        kwargs[key] = value
    if is_external(name):
        nc, ic = kwargs.pop("num_classes", None), kwargs.pop("in_channels", None)
        return _create_external(name, nc, ic, kwargs)
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
