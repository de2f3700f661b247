"""The model a run config describes: built for training, or rebuilt from a checkpoint.

``build_model(cfg, num_classes, in_channels)`` is ``create_model`` with the config's arguments,
then ``quantize_`` with its quantization config; the trainer builds its model with it, and
``model_from_checkpoint`` rebuilds a checkpoint's (reading the class count and input channels off
the saved weights, so no data set is loaded) for evaluation and integer deployment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..convert import UnsupportedModuleError, quantize_
from ..models import create_model
from .checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from .config import RunConfig, RunConfigError

__all__ = ["build_model", "model_from_checkpoint"]


def build_model(
    cfg: RunConfig, num_classes: int | None = None, in_channels: int | None = None
) -> nn.Module:
    """``cfg.model`` created (``num_classes`` / ``in_channels``: the model's defaults when None)
    and converted with ``cfg.quant_config()``. A model that cannot be built or converted is a
    ``RunConfigError`` naming the config key."""
    kwargs = dict(cfg.model.kwargs)
    if cfg.model.width is not None:
        kwargs["width"] = cfg.model.width
    sizes = {"num_classes": num_classes, "in_channels": in_channels}
    try:
        model = create_model(
            cfg.model.name, **{k: v for k, v in sizes.items() if v is not None}, **kwargs
        )
    except TypeError as exc:
        raise RunConfigError(f"model.kwargs: {exc}") from None
    except ValueError as exc:  # an importable model that does not fit the data
        raise RunConfigError(f"model.name: {exc}") from None
    try:
        quantize_(model, cfg.quant_config())
    except UnsupportedModuleError as exc:
        raise RunConfigError(f"model.name {cfg.model.name!r}: {exc}") from None
    return model


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The eval-mode quantized model of a trainer checkpoint (a ``.pt`` file or a run directory),
    and ``{"data", "model", "step"}``.

    The number of classes and input channels are read off the classifier and stem weight shapes,
    so no data set is loaded. Raises ``CheckpointError`` for a missing or damaged checkpoint and
    for weights that do not fit the model its run config names."""
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path)
    cfg = RunConfig.from_dict(ckpt["run_config"], source=f"{path} run_config")
    state = ckpt["model"]
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() in (2, 4)]
    if not weights:
        raise CheckpointError(f"{path}: the model state has no conv/linear weights")
    convs = [w for w in weights if w.dim() == 4]
    linears = [w for w in weights if w.dim() == 2]
    model = build_model(
        cfg,
        num_classes=int(linears[-1].shape[0]) if linears else None,
        in_channels=int(convs[0].shape[1]) if convs else None,
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit {cfg.model.name}: {first}") from None
    model.eval()
    data = cfg.data.name if cfg.data.name != "imagefolder" else "imagenet"
    return model, {"data": data, "model": cfg.model.name, "step": ckpt.get("step")}
