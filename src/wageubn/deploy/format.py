"""What the writer (``export``) and the reader (``runtime``) of an integer model agree on: the
file's format marker and version, and the error for a file that is not what a caller expects.

The format itself — tensors, graph metadata — is described in ``wageubn.deploy.export`` and
docs/deploy.md; ``read_export`` reads a file back and validates it. The reader imports this
module, never the writer (which needs ``wageubn.nn``, ``convert`` and ``torch.fx``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "VERSION", "DeployError", "read_export", "validate_export"]

FORMAT = "wageubn-integer-model"
VERSION = 1


class DeployError(ValueError):
    """An export or golden-tensor file is missing, corrupt, or not what the caller expects."""


def read_export(
    path: str | Path,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """The graph, the tensors and ``{"config", "preset", "source"}`` of an exported model file,
    validated; ``DeployError`` names the file and what is wrong."""
    from ..extras import require

    safetensors = require("safetensors", "export", "IntegerModel.load (wageubn predict)")
    SafetensorError, safe_open = safetensors.SafetensorError, safetensors.safe_open
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"{path}: no such exported model file; create it with wageubn export")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise DeployError(f"{path}: not a readable safetensors file ({first})") from None
    if meta.get("format") != FORMAT:
        raise DeployError(f"{path}: not a wageubn integer model (no format={FORMAT!r} marker)")
    if meta.get("version") != str(VERSION):
        raise DeployError(f"{path}: version {meta.get('version')!r} is not {VERSION}")
    try:
        graph = json.loads(meta["graph"])
        config = json.loads(meta.get("config", "{}"))
        source = json.loads(meta.get("source", "{}"))
    except (KeyError, json.JSONDecodeError) as exc:
        raise DeployError(f"{path}: corrupt graph metadata ({exc})") from None
    validate_export(path, graph, tensors)
    return graph, tensors, {"config": config, "preset": meta.get("preset"), "source": source}


def validate_export(path: Path, graph: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Every node reads names that exist and has its tensors, of the right dtypes."""
    try:
        nodes, output, inp = graph["nodes"], graph["output"], graph["input"]
        names = {"input"}
        for n in nodes:
            missing = [i for i in n["inputs"] if i not in names]
            if missing:
                raise DeployError(f"node {n['name']} reads {missing} before they exist")
            names.add(n["name"])
            want = {
                "conv2d": ["weight"],
                "linear": ["weight"],
                "batchnorm": ["mu", "sigma", "gamma", "beta"],
            }.get(n["op"], [])
            if n["op"] in ("conv2d", "linear") and n["bias"]:
                want = [*want, "bias"]
            for key in want:
                t = tensors.get(f"{n['name']}.{key}")
                if t is None:
                    raise DeployError(f"tensor {n['name']}.{key} is missing")
                ok = {"weight": (torch.int8, torch.int16), "bias": (torch.float32,)}.get(
                    key, (torch.int32,)
                )
                if t.dtype not in ok:
                    raise DeployError(f"tensor {n['name']}.{key} is {t.dtype}, expected {ok[0]}")
        if output not in names:
            raise DeployError(f"output {output!r} is not a node")
        if len(inp["mean"]) != inp["channels"] or len(inp["std"]) != inp["channels"]:
            raise DeployError("input normalization does not match the channel count")
    except DeployError as exc:
        raise DeployError(f"{path}: corrupt export: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise DeployError(f"{path}: corrupt export: graph lacks {exc}") from None
