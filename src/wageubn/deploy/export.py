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
``BatchNorm2d``, a model with no quantized layer, the ``fp32`` preset) or any op outside the list in
``_MODULE_OPS`` / ``_FUNCTION_OPS`` raises ``UnsupportedModuleError`` naming it.
"""

from __future__ import annotations

import json
import operator
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..config import WAGEUBNConfig
from ..convert import UnsupportedModuleError, config_of, config_or_none
from ..core.files import atomic_write_bytes
from ..nn import QuantBatchNorm2d, QuantConv2d, QuantLinear, QuantReLU
from ..quant import clipped_direct_quantize, direct_quantize, encode, range_exponent
from ..run import CheckpointError
from ..run import model_from_checkpoint as _model_from_checkpoint
from .format import FORMAT, VERSION, DeployError

__all__ = ["FORMAT", "DeployError", "export_model", "model_from_checkpoint"]

_QUANT_LEAVES = (QuantConv2d, QuantLinear, QuantBatchNorm2d, QuantReLU)
_PASS = (nn.Identity, nn.Dropout, nn.Dropout2d)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _QUANT_LEAVES) or super().is_leaf_module(m, qualname)


# -- checkpoints (read by wageubn.run, which knows the trainer's format) ----------------------------


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The eval-mode quantized model of a trainer checkpoint, and ``{"data", "model", "step"}``:
    ``wageubn.run.model_from_checkpoint``, with a checkpoint that cannot be used reported as a
    ``DeployError``."""
    try:
        return _model_from_checkpoint(path)
    except CheckpointError as exc:
        raise DeployError(str(exc)) from None


# -- graph capture ---------------------------------------------------------------------------------


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v]


def _deploy_weight(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """``bits``-bit (8 or 16) per-tensor power-of-two codes of a float weight: the finest ``2^e``
    whose codes ``round(w / 2^e)`` (half to even) fit ``±(2^(bits−1) − 1)``."""
    e = range_exponent(w.detach().float(), bits)
    e = 1 - bits if e is None else e
    top = 2 ** (bits - 1) - 1
    codes = torch.round(w.detach().double() * 2.0**-e).clamp_(-top, top)
    return codes.to(torch.int8 if bits == 8 else torch.int16), e


def _codes(x: torch.Tensor, exponent: int, name: str) -> torch.Tensor:
    """int32 codes of a tensor already on the ``2^exponent`` grid (``encode`` refuses others)."""
    try:
        return encode(x.detach().float(), exponent, 32).codes.to(torch.int32)
    except ValueError as exc:
        raise UnsupportedModuleError(f"export: {name}: {exc}") from None


def _conv_linear(
    name: str, mod: nn.Module, tensors: dict[str, torch.Tensor], float_bits: int
) -> dict[str, Any]:
    quantized = isinstance(mod, (QuantConv2d, QuantLinear))
    node: dict[str, Any] = {"source": type(mod).__name__}
    if quantized:
        cfg = mod.config
        if cfg.weight is None:
            raise UnsupportedModuleError(
                f"export: {name} is a {type(mod).__name__} whose weights are float (config.weight="
                "None, e.g. the fp32 preset); quantize the model with a paper or int8 preset"
            )
        bits = cfg.weight
        w = clipped_direct_quantize(mod.weight.detach().float(), bits)  # QC(W, k), as forward
        node["w_exp"] = 1 - bits
        tensors[f"{name}.weight"] = encode(w, 1 - bits, 8).codes.to(torch.int8)
        node["weight"] = "QC"
        node["input_fit"] = cfg.activation if cfg.arithmetic == "int8" else None
    else:
        codes, e = _deploy_weight(mod.weight, float_bits)
        tensors[f"{name}.weight"] = codes
        node["w_exp"] = e
        node["weight"] = f"deploy-pow2-{float_bits}bit"
        node["input_fit"] = None
    if mod.bias is not None:
        tensors[f"{name}.bias"] = mod.bias.detach().float().contiguous()
    node["bias"] = mod.bias is not None
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise UnsupportedModuleError(
                f"export: {name} has padding={mod.padding!r}, padding_mode={mod.padding_mode!r}; "
                "integer deployment supports numeric zero padding only"
            )
        node.update(
            op="conv2d",
            stride=_pair(mod.stride),
            padding=_pair(mod.padding),
            dilation=_pair(mod.dilation),
            groups=int(mod.groups),
        )
    else:
        node["op"] = "linear"
    return node


def _batchnorm(name: str, mod: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    if not isinstance(mod, QuantBatchNorm2d):
        raise UnsupportedModuleError(
            f"export: {name} is a float {type(mod).__name__}; integer deployment needs it "
            "quantized (quantize_ the model with a paper or int8 preset)"
        )
    cfg = mod.config
    roles = ("bn_mean", "bn_std", "bn_xhat", "bn_gamma", "bn_beta")
    missing = [r for r in roles if getattr(cfg, r) is None]
    if missing:
        raise UnsupportedModuleError(
            f"export: {name} keeps {', '.join(missing)} float; integer deployment needs every BN "
            "role quantized"
        )
    if mod.running_mean is None or not mod.affine:
        raise UnsupportedModuleError(
            f"export: {name} has no running statistics or no affine parameters (track_running_stats"
            "=False or affine=False); integer deployment needs both"
        )
    # exactly the eval-mode forward's quantities (float32, as QuantBatchNorm2d computes them)
    mean = direct_quantize(mod.running_mean.detach().float(), cfg.bn_mean)
    std = direct_quantize(torch.sqrt(mod.running_var.detach().float()), cfg.bn_std) + cfg.bn_eps
    gamma = direct_quantize(mod.weight.detach().float(), cfg.bn_gamma)
    beta = direct_quantize(mod.bias.detach().float(), cfg.bn_beta)
    eps = Fraction(float(torch.tensor(cfg.bn_eps, dtype=torch.float32)))
    s_exp = min(1 - cfg.bn_std, -_twos(eps.denominator))
    exps = {
        "mu": 1 - cfg.bn_mean,
        "sigma": s_exp,
        "gamma": 1 - cfg.bn_gamma,
        "beta": 1 - cfg.bn_beta,
    }
    for key, value in (("mu", mean), ("sigma", std), ("gamma", gamma), ("beta", beta)):
        tensors[f"{name}.{key}"] = _codes(value, exps[key], f"{name}.{key}")
    if bool((tensors[f"{name}.sigma"] <= 0).any()):
        raise UnsupportedModuleError(f"export: {name}: a quantized standard deviation is <= 0")
    return {
        "op": "batchnorm",
        "source": type(mod).__name__,
        "xhat_bits": cfg.bn_xhat,
        **{f"{k}_exp": v for k, v in exps.items()},
    }


def _twos(n: int) -> int:
    """log2 of a power of two (the denominator of a binary fraction)."""
    return n.bit_length() - 1


def _module_node(
    name: str, mod: nn.Module, tensors: dict[str, torch.Tensor], float_bits: int
) -> dict[str, Any]:
    if isinstance(mod, (nn.Conv2d, nn.Linear)):
        return _conv_linear(name, mod, tensors, float_bits)
    if isinstance(mod, nn.BatchNorm2d):
        return _batchnorm(name, mod, tensors)
    if isinstance(mod, QuantReLU):
        cfg = mod.config
        if cfg.activation is None:
            return {"op": "relu", "bits": None, "mode": None, "source": "QuantReLU"}
        mode = "fit" if cfg.arithmetic == "int8" else "direct"
        return {"op": "relu", "bits": cfg.activation, "mode": mode, "source": "QuantReLU"}
    if isinstance(mod, nn.ReLU):
        return {"op": "relu", "bits": None, "mode": None, "source": "ReLU"}
    if isinstance(mod, nn.MaxPool2d):
        if mod.return_indices:
            raise UnsupportedModuleError(f"export: {name}: MaxPool2d(return_indices=True)")
        return {
            "op": "maxpool2d",
            "kernel": _pair(mod.kernel_size),
            "stride": _pair(mod.stride or mod.kernel_size),
            "padding": _pair(mod.padding),
            "dilation": _pair(mod.dilation),
            "ceil_mode": bool(mod.ceil_mode),
        }
    if isinstance(mod, nn.AvgPool2d):
        if mod.ceil_mode or (not mod.count_include_pad and any(_pair(mod.padding))):
            raise UnsupportedModuleError(
                f"export: {name}: AvgPool2d with ceil_mode or count_include_pad=False and padding"
            )
        return {
            "op": "avgpool2d",
            "kernel": _pair(mod.kernel_size),
            "stride": _pair(mod.stride or mod.kernel_size),
            "padding": _pair(mod.padding),
            "divisor": mod.divisor_override,
        }
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        size = mod.output_size
        size = [size, size] if isinstance(size, int) or size is None else list(size)
        return {"op": "adaptive_avgpool2d", "output_size": size}
    if isinstance(mod, nn.Flatten):
        return {"op": "flatten", "start_dim": mod.start_dim, "end_dim": mod.end_dim}
    if isinstance(mod, _PASS):
        return {"op": "identity", "source": type(mod).__name__}
    raise UnsupportedModuleError(
        f"export: {name} is a {type(mod).__module__}.{type(mod).__name__}, which has no integer "
        "deployment (supported: quantized conv/linear/BN/ReLU, float Conv2d/Linear, ReLU, "
        "max/avg/adaptive-avg pooling, Flatten, Identity, Dropout, residual add)"
    )


def _function_node(node: fx.Node) -> dict[str, Any]:
    target = node.target
    if node.op == "call_function" and target in (operator.add, torch.add):
        if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
            raise UnsupportedModuleError(f"export: {node.name}: only tensor + tensor is supported")
        return {"op": "add"}
    if (node.op == "call_function" and target is torch.flatten) or (
        node.op == "call_method" and target == "flatten"
    ):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return {"op": "flatten", "start_dim": int(start), "end_dim": int(end)}
    if node.op == "call_function" and target in (torch.relu, torch.nn.functional.relu):
        return {"op": "relu", "bits": None, "mode": None, "source": "relu"}
    what = getattr(target, "__name__", str(target))
    raise UnsupportedModuleError(
        f"export: operation {node.op} {what!r} (node {node.name}) has no integer deployment "
        "(supported functions: add, flatten, relu)"
    )


def capture_graph(
    model: nn.Module, float_weight_bits: int = 8
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON graph and the integer tensors of a quantized ``model`` (see module docstring)."""
    if float_weight_bits not in (8, 16):
        raise ValueError(f"float_weight_bits must be 8 or 16, got {float_weight_bits!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"export: model must be an nn.Module, got {type(model).__name__}")
    config = config_or_none(model)
    if not isinstance(config, WAGEUBNConfig) or config.weight is None or config.activation is None:
        preset = getattr(config, "name", None)
        raise UnsupportedModuleError(
            "export: the model is not quantized"
            + (f" (preset {preset!r} keeps weights or activations float)" if config else "")
            + "; integer deployment needs quantize_(model, 'paper') or 'int8' first"
        )
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # tracing failures come in many types; report them as one
        raise UnsupportedModuleError(
            f"export: torch.fx could not trace {type(model).__name__} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); the model needs a data-independent forward"
        ) from None
    tensors: dict[str, torch.Tensor] = {}
    nodes: list[dict[str, Any]] = []
    placeholders: list[str] = []
    output = None
    modules = dict(model.named_modules())
    for node in graph.nodes:
        if node.op == "placeholder":
            placeholders.append(node.name)
            continue
        if node.op == "output":
            arg = node.args[0]
            if not isinstance(arg, fx.Node):
                raise UnsupportedModuleError("export: the model must return one tensor (logits)")
            output = arg.name
            continue
        if node.op == "get_attr":
            raise UnsupportedModuleError(
                f"export: node {node.name} reads the attribute {node.target!r} inside forward"
            )
        if node.op == "call_module":
            spec = _module_node(
                str(node.target), modules[str(node.target)], tensors, float_weight_bits
            )
            spec["name"] = str(node.target)
        else:
            spec = _function_node(node)
            spec["name"] = node.name
        spec["inputs"] = [a.name for a in node.args if isinstance(a, fx.Node)]
        spec["node"] = node.name
        nodes.append(spec)
    if len(placeholders) != 1:
        raise UnsupportedModuleError(f"export: the model must take one input, got {placeholders}")
    # fx names values by node; rename inputs to the node's stored name
    names = {n["node"]: n["name"] for n in nodes}
    names[placeholders[0]] = "input"
    for n in nodes:
        n["inputs"] = [names[i] for i in n["inputs"]]
        del n["node"]
    first = [n for n in nodes if "input" in n["inputs"]]
    if len(first) != 1 or first[0]["op"] != "conv2d" or first[0]["groups"] != 1:
        raise UnsupportedModuleError(
            "export: the model input must feed exactly one Conv2d with groups=1 (the stem); got "
            + ", ".join(f"{n['name']} ({n['op']})" for n in first)
        )
    graph_json = {"nodes": nodes, "output": names[output]}
    return graph_json, tensors


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
