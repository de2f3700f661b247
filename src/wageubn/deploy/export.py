"""Export a WAGEUBN model for integer-only inference: one safetensors file (docs/deploy.md).

The file holds

* ``{layer}.weight`` — int8 weight codes (``w = code · 2^w_exp``, the exponent in the graph);
* ``{layer}.bias`` — float32, exact copy (the runtime rounds it once onto the accumulator grid);
* ``{bn}.mu`` / ``{bn}.sigma`` / ``{bn}.gamma`` / ``{bn}.beta`` — int32 codes of the quantized BN
  quantities of the eval-mode forward (``Q(μ_run, 16)``, ``Q(sqrt(var_run), 16) + ε``,
  ``Q(γ, 8)``, ``Q(β, 8)``), each with its exponent in the graph. BN is *kept* as quantized
  integer parameters; the runtime folds it into a per-channel integer multiply, offset and exact
  rounding division (``wageubn.deploy.runtime``);
* metadata ``format``, ``version``, ``graph`` (JSON: input normalization, nodes in execution order,
  output), ``config`` (the ``WAGEUBNConfig`` as JSON) and ``preset``.

The graph is captured with ``torch.fx.symbolic_trace`` (the quantized layers are leaves). Float
``Conv2d`` / ``Linear`` layers (the stem and classifier of the default config) are quantized for
deployment to 8-bit per-tensor power-of-two weights; anything else that is float (a float
``BatchNorm2d``, a model with no quantized layer, the ``fp32`` preset) or any op outside those
``wageubn.deploy.capture`` knows raises ``UnsupportedModuleError`` naming it.

This module writes the file (``export_model``); the graph and tensors come from
``deploy/capture.py``, and what the writer and the reader (``deploy/runtime.py``) share from
``deploy/format.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..convert import config_of
from ..core.files import atomic_write_bytes
from ..run import CheckpointError
from ..run import model_from_checkpoint as _model_from_checkpoint
from .capture import capture_graph
from .format import FORMAT, VERSION, DeployError

__all__ = ["FORMAT", "DeployError", "capture_graph", "export_model", "model_from_checkpoint"]

# -- checkpoints (read by wageubn.run, which knows the trainer's format) ----------------------------


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The eval-mode quantized model of a trainer checkpoint, and ``{"data", "model", "step"}``:
    ``wageubn.run.model_from_checkpoint``, with a checkpoint that cannot be used reported as a
    ``DeployError``."""
    try:
        return _model_from_checkpoint(path)
    except CheckpointError as exc:
        raise DeployError(str(exc)) from None


# -- writing ---------------------------------------------------------------------------------------


def export_model(
    model_or_checkpoint: nn.Module | str | Path,
    path: str | Path,
    *,
    data: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    float_weight_bits: int = 8,
) -> Path:
    """Write the integer deployment of a quantized model (or a trainer checkpoint) to ``path``.

    The input normalization ``(pixel / 255 − mean) / std`` is folded into the stem: give ``data``
    (a name of ``wageubn.data.MEAN_STD``; a checkpoint knows its own) or ``mean`` and ``std``.
    Float ``Conv2d`` / ``Linear`` weights (the default config's stem and classifier) become
    ``float_weight_bits`` (8 or 16) per-tensor power-of-two codes; 16-bit codes run as two int8
    digits. Raises ``UnsupportedModuleError`` for a float model or an op without integer deployment,
    ``OSError`` when ``path`` cannot be written (an existing file there is then left unchanged).
    """
    from ..data import MEAN_STD
    from ..extras import require

    st = require("safetensors.torch", "export", "export_model (wageubn export)")

    source: dict[str, Any] = {}
    if isinstance(model_or_checkpoint, (str, Path)):
        model, source = model_from_checkpoint(model_or_checkpoint)
        data = data or source["data"]
        source["checkpoint"] = str(model_or_checkpoint)
    elif isinstance(model_or_checkpoint, nn.Module):
        model = model_or_checkpoint
    else:
        raise TypeError(
            "export_model: model_or_checkpoint must be an nn.Module or a checkpoint path, got "
            f"{type(model_or_checkpoint).__name__}"
        )
    if mean is None or std is None:
        if data is None:
            raise ValueError(
                "export_model: the input normalization is unknown; pass data='mnist' (a name in "
                f"{sorted(MEAN_STD)}) or mean=..., std=..."
            )
        if data not in MEAN_STD:
            raise ValueError(f"export_model: data={data!r} is not one of {sorted(MEAN_STD)}")
        mean, std = MEAN_STD[data]
    # the float32 values the data pipeline divides by (wageubn.data.transforms.normalize)
    mean32 = [float(v) for v in torch.tensor(mean, dtype=torch.float32)]
    std32 = [float(v) for v in torch.tensor(std, dtype=torch.float32)]
    if len(mean32) != len(std32) or min(std32) <= 0:
        raise ValueError(f"export_model: mean {mean} and std {std} must match in length, std > 0")
    was_training = model.training
    model.eval()
    try:
        graph, tensors = capture_graph(model, float_weight_bits)
    finally:
        model.train(was_training)
    stem = next(n for n in graph["nodes"] if "input" in n["inputs"])
    c_in = int(tensors[f"{stem['name']}.weight"].shape[1])
    if c_in != len(mean32):
        raise ValueError(
            f"export_model: the stem {stem['name']} takes {c_in} channels but the normalization "
            f"has {len(mean32)} (data={data!r}); pass the matching data name or mean/std"
        )
    graph["input"] = {"mean": mean32, "std": std32, "channels": c_in, "data": data}
    config = config_of(model)
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "graph": json.dumps(graph),
        "config": json.dumps(config.to_dict()),
        "preset": config.name,
        "source": json.dumps(source),
    }
    path = Path(path)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    # atomic: a failed write (missing or read-only directory, full disk) leaves any previous file
    atomic_write_bytes(path, st.save(tensors, metadata=metadata))
    return path
