"""Graph capture for the integer deployment: a quantized model's ``torch.fx`` graph as the JSON
nodes of an export file, and its integer tensors (``capture_graph``; the file format is described
in ``wageubn.deploy.export``, which writes it).

Each call_module node becomes one JSON node from its module (``_module_node``: quantized and
float conv / linear — weights as int8 codes, float ones quantized for deployment to per-tensor
power-of-two codes —, quantized BatchNorm as int32 codes of its eval-mode quantities, ReLU,
pooling, flatten, identity); each call_function / call_method node from its function
(``_function_node``: add, flatten, relu). Anything else raises ``UnsupportedModuleError`` naming
it.
"""

from __future__ import annotations

import operator
from fractions import Fraction
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..config import WAGEUBNConfig
from ..convert import UnsupportedModuleError, config_or_none
from ..nn import QuantBatchNorm2d, QuantConv2d, QuantLinear, QuantReLU
from ..quant import clipped_direct_quantize, direct_quantize, encode, range_exponent

__all__ = ["capture_graph"]

_QUANT_LEAVES = (QuantConv2d, QuantLinear, QuantBatchNorm2d, QuantReLU)
_PASS = (nn.Identity, nn.Dropout, nn.Dropout2d)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _QUANT_LEAVES) or super().is_leaf_module(m, qualname)


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
    name: str, mod: nn.Conv2d | nn.Linear, tensors: dict[str, torch.Tensor], float_bits: int
) -> dict[str, Any]:
    node: dict[str, Any] = {"source": type(mod).__name__}
    if isinstance(mod, (QuantConv2d, QuantLinear)):
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
    bits: dict[str, int] = {r: getattr(cfg, r) for r in roles}
    missing = [r for r in roles if bits[r] is None]
    if missing:
        raise UnsupportedModuleError(
            f"export: {name} keeps {', '.join(missing)} float; integer deployment needs every BN "
            "role quantized"
        )
    mean_run, var_run, weight, bias = mod.running_mean, mod.running_var, mod.weight, mod.bias
    if mean_run is None or var_run is None or weight is None or bias is None or not mod.affine:
        raise UnsupportedModuleError(
            f"export: {name} has no running statistics or no affine parameters (track_running_stats"
            "=False or affine=False); integer deployment needs both"
        )
    # exactly the eval-mode forward's quantities (float32, as QuantBatchNorm2d computes them)
    mean = direct_quantize(mean_run.detach().float(), bits["bn_mean"])
    std = direct_quantize(torch.sqrt(var_run.detach().float()), bits["bn_std"]) + cfg.bn_eps
    gamma = direct_quantize(weight.detach().float(), bits["bn_gamma"])
    beta = direct_quantize(bias.detach().float(), bits["bn_beta"])
    eps = Fraction(float(torch.tensor(cfg.bn_eps, dtype=torch.float32)))
    s_exp = min(1 - bits["bn_std"], -_twos(eps.denominator))
    exps = {
        "mu": 1 - bits["bn_mean"],
        "sigma": s_exp,
        "gamma": 1 - bits["bn_gamma"],
        "beta": 1 - bits["bn_beta"],
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
        out = mod.output_size
        size = [out, out] if isinstance(out, int) or out is None else list(out)
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
        # fx arguments: ints in a traced flatten
        start: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end: Any = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
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
