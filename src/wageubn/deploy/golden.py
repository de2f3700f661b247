"""Golden tensors: one recorded training step, value for value (docs/golden-tensors.md).

``dump_step(model, (x, y), optimizer_config, path)`` runs one QSGD step of a *copy* of a quantized
model (the model itself is not changed) and writes every quantity of the step to safetensors:

* ``{name}.codes`` — integer codes, with ``{name}.exp`` in the metadata: value = codes · 2^exp;
  recorded with ``wageubn.quant.encode``, which refuses any value off its grid;
* ``{name}.float32`` / ``{name}.int64`` — quantities the contract keeps in float (float stem and
  classifier, BN running statistics, raw gradients, the input, logits and loss) and the labels.

Capture is from the outside: the observation taps that every quantizer call site already has
(``wageubn.core.observe.set_recorder``, installed only inside a context manager) report W, A, E1, E2,
the BN μ, σ, x̂, γ, β, G and momentum with the layer or parameter they belong to; forward hooks
add each conv/linear output Z and BN output y. ``verify_dump(path)`` (``wageubn.deploy.verify``)
reloads the inputs and weights from a dump, recomputes the step with ``record_step`` and compares
every tensor bit for bit, plus integer re-derivations of W, U and momentum.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import WAGEUBNConfig
from ..convert import UnsupportedModuleError, config_of, config_or_none
from ..nn import QuantBatchNorm2d, QuantConv2d, QuantLinear, QuantReLU
from ..optim import QSGD, quantized_lr
from ..quant import encode, fit_exponent, pow2_exponent

__all__ = [
    "FORMAT",
    "OPTIMIZER_KEYS",
    "VERSION",
    "dump_step",
    "param_prefix",
    "record_step",
    "restored",
]

FORMAT = "wageubn-golden-step"
VERSION = 1
OPTIMIZER_KEYS = {"lr", "momentum", "weight_decay", "grad_range", "bn_weight_decay", "seed"}


def _bits_for(max_code_bits: int) -> int:
    return 8 if max_code_bits <= 8 else 16 if max_code_bits <= 16 else 32


class _Recorder:
    """Collects ``name -> (tensor, exp | None)`` in the order the step produces them."""

    def __init__(self, config: WAGEUBNConfig) -> None:
        self.cfg = config
        self.out: dict[str, tuple[torch.Tensor, int | None]] = {}

    def codes(self, name: str, value: torch.Tensor, exp: int, bits: int) -> None:
        try:
            c = encode(value.detach(), exp, bits).codes
        except ValueError as exc:
            raise ValueError(f"dump_step: {name}: {exc}") from None
        self.out[f"{name}.codes"] = (c, exp)

    def floats(self, name: str, value: torch.Tensor) -> None:
        self.out[f"{name}.float32"] = (value.detach().float().clone(), None)

    def raw(self, name: str, value: torch.Tensor) -> None:
        self.out[name] = (value.detach().clone(), None)


def param_prefix(module_name: str, mod: nn.Module, pname: str) -> str:
    if isinstance(mod, nn.BatchNorm2d):
        return f"{module_name}.{'gamma' if pname == 'weight' else 'beta'}"
    if pname == "weight" and isinstance(mod, (nn.Conv2d, nn.Linear)):
        return module_name
    return f"{module_name}.{pname}"


def _param_role(p: torch.Tensor, opt: QSGD) -> str:
    return opt.role_of(p, opt.param_groups[0])


_BN_NAMES = {
    "bn_mean": "mu",
    "bn_std": "sigma",
    "bn_xhat": "xhat",
    "bn_gamma": "gamma",
    "bn_beta": "beta",
}


class _Taps:
    """The ``wageubn.core.observe`` recorder: every quantizer call site reports ``(role, before,
    after, kind, bits)`` to the observer of its owner (a layer or a parameter)."""

    def __init__(self, rec: _Recorder, owners: dict[int, tuple[str, str]]) -> None:
        self.rec = rec
        self.owners = owners  # id(module or parameter) -> (name, "module" | param role)
        self.a_exp: dict[str, int] = {}

    def observer_for(self, owner: object):
        entry = self.owners.get(id(owner))
        if entry is None:
            return None
        name, kind_of_owner = entry

        def observe(role, before, after, kind, bits, **extra):
            self.record(name, kind_of_owner, role, before, after, kind, bits, extra)

        return observe

    def record(self, name, owner_kind, role, before, after, kind, bits, extra) -> None:
        rec = self.rec
        if role in _BN_NAMES:
            rec.codes(f"{name}.{_BN_NAMES[role]}", after, 1 - bits, 32)
        elif role == "A":
            e = fit_exponent(before, bits) if kind == "fit" else 1 - bits
            self.a_exp[name] = e
            rec.codes(f"{name}.A", after, e, 8 if kind == "fit" else 32)
        elif role == "W":
            rec.codes(f"{name}.W", after, 1 - bits, 8)
        elif role in ("E1", "E2"):
            r = pow2_exponent(before, role)
            if role == "E1":
                e = (1 - bits) if r is None else r - (bits - 1)
                width = bits if extra.get("narrow_range") else bits + 1
            else:
                e = 2 * (1 - bits) if r is None else r - 2 * (bits - 1)
                width = 2 * bits
            rec.codes(f"{name}.{role}", after, e, _bits_for(width))
        elif role == "G":
            if kind == "CQ":
                rec.codes(
                    f"{name}.G",
                    after,
                    2 * (1 - bits),
                    _bits_for((int(extra["dr"]) - 1).bit_length() + 1),
                )
            else:
                rec.codes(f"{name}.G", after, 1 - bits, 32)
        elif role == "momentum":
            rec.codes(f"{name}.momentum", after, 1 - bits, 32)
        # "U" is recorded from the parameters after the step (float parameters are not on a grid)


@contextlib.contextmanager
def _capture(model: nn.Module, rec: _Recorder, params: dict) -> Iterator[_Taps]:
    from ..core.observe import set_recorder

    cfg = rec.cfg
    owners: dict[int, tuple[str, str]] = {id(p): (prefix, "param") for prefix, p in params.values()}
    handles = []
    taps = _Taps(rec, owners)

    def post(name):
        def hook(mod, args, out):
            x = args[0]
            if isinstance(mod, (QuantConv2d, QuantLinear)):
                ex = taps.a_exp.get(name) if cfg.arithmetic == "int8" else _input_exponent(x, cfg)
                if ex is None:
                    rec.floats(f"{name}.Z", out)
                else:
                    rec.codes(f"{name}.Z", out, ex + 1 - cast(int, cfg.weight), 32)
            elif isinstance(mod, (nn.Conv2d, nn.Linear)):
                rec.floats(f"{name}.Z", out)
            elif isinstance(mod, QuantBatchNorm2d):
                xhat, gamma, beta = cast(
                    tuple[int, int, int], (cfg.bn_xhat, cfg.bn_gamma, cfg.bn_beta)
                )
                e = min(1 - xhat + 1 - gamma, 1 - beta)
                rec.codes(f"{name}.y", out, e, 32)

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, (QuantReLU, QuantBatchNorm2d, nn.Conv2d, nn.Linear)):
            owners[id(mod)] = (name, "module")
            handles.append(mod.register_forward_hook(post(name)))
    previous = set_recorder(taps)
    try:
        yield taps
    finally:
        set_recorder(previous)
        for h in handles:
            h.remove()


def _input_exponent(x: torch.Tensor, cfg: WAGEUBNConfig) -> int | None:
    """The exponent of a quantized layer's input A (None: a float input, e.g. the image)."""
    bits = cast(int, cfg.activation)  # dump_step records quantized models: A is set
    if cfg.arithmetic == "int8":
        return fit_exponent(x.detach(), bits)
    e = 1 - bits
    scaled = x.detach().double() * 2.0**-e
    return e if bool((scaled == scaled.round()).all()) else None


def _check_opt(optimizer_config: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(optimizer_config, dict):
        raise TypeError(f"optimizer_config must be a dict, got {type(optimizer_config).__name__}")
    unknown = sorted(set(optimizer_config) - OPTIMIZER_KEYS)
    if unknown or "lr" not in optimizer_config:
        raise ValueError(
            f"optimizer_config: unknown keys {unknown} or no 'lr'; allowed: {sorted(OPTIMIZER_KEYS)}"
        )
    return {
        "momentum": 0.25,
        "weight_decay": 1e-4,
        "grad_range": None,
        "bn_weight_decay": False,
        "seed": 0,
        **optimizer_config,
    }


def record_step(model: nn.Module, batch: Any, opt_cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = config_or_none(model)
    if not isinstance(cfg, WAGEUBNConfig) or cfg.weight is None or cfg.activation is None:
        raise UnsupportedModuleError(
            "dump_step: the model is not quantized (fp32 preset or no quantize_); golden tensors "
            "record a quantized step: quantize_(model, 'paper') or 'int8' first"
        )
    x, y = batch
    # step the model itself and restore it after (no copy of a model that may be large)
    with restored(model):
        return _step(model, cfg, x, y, opt_cfg)


@contextlib.contextmanager
def restored(model: nn.Module) -> Iterator[None]:
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    grads = {id(p): p.grad for p in model.parameters()}
    training = model.training
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in model.state_dict(keep_vars=True).items():
                v.copy_(state[k])
        for p in model.parameters():
            p.grad = grads[id(p)]
        model.train(training)


def _step(model: nn.Module, cfg: WAGEUBNConfig, x, y, opt_cfg) -> dict[str, Any]:
    model.train()
    rec = _Recorder(cfg)
    gen = torch.Generator().manual_seed(int(opt_cfg["seed"]))
    opt = QSGD(
        model.parameters(),
        lr=opt_cfg["lr"],
        momentum=opt_cfg["momentum"],
        weight_decay=opt_cfg["weight_decay"],
        config=cfg,
        generator=gen,
        grad_range=opt_cfg["grad_range"],
        bn_weight_decay=opt_cfg["bn_weight_decay"],
    )
    params = {}
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            params[id(p)] = (param_prefix(mname, mod, pname), p)
    rec.raw("input.x.float32", x.float())
    rec.raw("input.labels.int64", y.to(torch.int64))
    _state(model, opt, rec, params, "U0")
    with _capture(model, rec, params):
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        rec.floats("output.logits", out)
        rec.floats("output.loss", loss.reshape(1))
        for prefix, p in params.values():
            if p.grad is not None:
                rec.floats(f"{prefix}.grad", p.grad)
        opt.step()
    _state(model, opt, rec, params, "U")
    return rec.out


def _state(model, opt, rec: _Recorder, params, tag: str) -> None:
    """Stored parameters (and, after the step, momentum) and BN running statistics."""
    cfg = rec.cfg
    for prefix, p in params.values():
        role = _param_role(p, opt)
        if role != "float" and cfg.update is not None:
            rec.codes(f"{prefix}.{tag}", p, 1 - cfg.update, 32)
        else:
            rec.floats(f"{prefix}.{tag}", p)
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if tag == "U" and buf is not None:
            if role != "float" and cfg.momentum is not None:
                rec.codes(f"{prefix}.momentum", buf, 1 - cfg.momentum, 32)
            else:
                rec.floats(f"{prefix}.momentum", buf)
    for mname, mod in model.named_modules():
        if not isinstance(mod, nn.BatchNorm2d):
            continue
        mean, var, count = mod.running_mean, mod.running_var, mod.num_batches_tracked
        if mean is not None and var is not None and count is not None:  # tracked: all three
            rec.floats(f"{mname}.running_mean.{tag}", mean)
            rec.floats(f"{mname}.running_var.{tag}", var)
            rec.raw(f"{mname}.num_batches_tracked.{tag}.int64", count)


def dump_step(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    optimizer_config: dict[str, Any],
    path: str | Path,
    *,
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Record one QSGD training step of a copy of ``model`` on ``batch = (x, y)`` to ``path``.

    ``optimizer_config``: ``lr`` (required), ``momentum`` (0.25), ``weight_decay`` (1e-4),
    ``grad_range`` (the config's), ``bn_weight_decay`` (False), ``seed`` (0: the generator of the
    stochastic rounding of G). Give ``model_name`` / ``model_kwargs`` (a ``create_model`` call) so
    that ``verify_dump(path)`` can rebuild the model without being handed one.
    """
    from ..extras import require

    save_file = require("safetensors.torch", "export", "dump_step (wageubn dump-step)").save_file
    opt_cfg = _check_opt(optimizer_config)
    tensors = record_step(model, batch, opt_cfg)
    cfg = config_of(model)
    meta = {
        "format": FORMAT,
        "version": str(VERSION),
        "config": json.dumps(cfg.to_dict()),
        "preset": cfg.name,
        "optimizer": json.dumps({**opt_cfg, "lr_q": quantized_lr(opt_cfg["lr"], cfg)}),
        "model": json.dumps({"name": model_name, "kwargs": model_kwargs or {}}),
        "names": json.dumps(list(tensors)),
        "bn_momentum": json.dumps(
            {n: m.momentum for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        ),
    }
    for key, (_, e) in tensors.items():
        if e is not None:
            meta[key.removesuffix(".codes") + ".exp"] = str(e)
    path = Path(path)
    save_file({k: t.contiguous() for k, (t, _) in tensors.items()}, str(path), metadata=meta)
    return path


def __getattr__(name: str) -> Any:
    # verify_dump moved to deploy/verify.py (which imports this module): keep the old path working
    if name == "verify_dump":
        from .verify import verify_dump

        return verify_dump
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
