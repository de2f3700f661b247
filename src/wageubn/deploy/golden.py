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
add each conv/linear output Z and BN output y. ``verify_dump(path)`` reloads the inputs and weights
from a dump, recomputes the step and compares every tensor bit for bit, plus integer re-derivations of W, U and momentum.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import WAGEUBNConfig
from ..convert import UnsupportedModuleError, config_of, config_or_none
from ..nn import QuantBatchNorm2d, QuantConv2d, QuantLinear, QuantReLU
from ..optim import QSGD, quantized_lr
from ..quant import encode, fit_exponent, pow2_exponent
from .format import DeployError

__all__ = ["dump_step", "verify_dump"]

FORMAT = "wageubn-golden-step"
VERSION = 1
_OPT_KEYS = {"lr", "momentum", "weight_decay", "grad_range", "bn_weight_decay", "seed"}


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


def _param_prefix(module_name: str, mod: nn.Module, pname: str) -> str:
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
                    rec.codes(f"{name}.Z", out, ex + 1 - cfg.weight, 32)
            elif isinstance(mod, (nn.Conv2d, nn.Linear)):
                rec.floats(f"{name}.Z", out)
            elif isinstance(mod, QuantBatchNorm2d):
                e = min(1 - cfg.bn_xhat + 1 - cfg.bn_gamma, 1 - cfg.bn_beta)
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
    if cfg.arithmetic == "int8":
        return fit_exponent(x.detach(), cfg.activation)
    e = 1 - cfg.activation
    scaled = x.detach().double() * 2.0**-e
    return e if bool((scaled == scaled.round()).all()) else None


def _check_opt(optimizer_config: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(optimizer_config, dict):
        raise TypeError(f"optimizer_config must be a dict, got {type(optimizer_config).__name__}")
    unknown = sorted(set(optimizer_config) - _OPT_KEYS)
    if unknown or "lr" not in optimizer_config:
        raise ValueError(
            f"optimizer_config: unknown keys {unknown} or no 'lr'; allowed: {sorted(_OPT_KEYS)}"
        )
    return {
        "momentum": 0.25,
        "weight_decay": 1e-4,
        "grad_range": None,
        "bn_weight_decay": False,
        "seed": 0,
        **optimizer_config,
    }


def _record_step(model: nn.Module, batch: Any, opt_cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = config_or_none(model)
    if not isinstance(cfg, WAGEUBNConfig) or cfg.weight is None or cfg.activation is None:
        raise UnsupportedModuleError(
            "dump_step: the model is not quantized (fp32 preset or no quantize_); golden tensors "
            "record a quantized step: quantize_(model, 'paper') or 'int8' first"
        )
    x, y = batch
    # step the model itself and restore it after (no copy of a model that may be large)
    with _restored(model):
        return _step(model, cfg, x, y, opt_cfg)


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
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
            params[id(p)] = (_param_prefix(mname, mod, pname), p)
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
        if isinstance(mod, nn.BatchNorm2d) and mod.running_mean is not None:
            rec.floats(f"{mname}.running_mean.{tag}", mod.running_mean)
            rec.floats(f"{mname}.running_var.{tag}", mod.running_var)
            rec.raw(f"{mname}.num_batches_tracked.{tag}.int64", mod.num_batches_tracked)


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
    tensors = _record_step(model, batch, opt_cfg)
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


# -- verification ----------------------------------------------------------------------------------


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from ..extras import require

    safetensors = require("safetensors", "export", "verify_dump")
    SafetensorError, safe_open = safetensors.SafetensorError, safetensors.safe_open
    if not path.is_file():
        raise DeployError(f"{path}: no such golden-step file; create it with wageubn dump-step")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DeployError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
        raise DeployError(f"{path}: not a wageubn golden-step file (format/version marker)")
    return tensors, meta


def _decode(tensors: dict[str, torch.Tensor], meta: dict[str, str], name: str) -> torch.Tensor:
    if f"{name}.codes" in tensors:
        e = int(meta[f"{name}.exp"])
        return tensors[f"{name}.codes"].double().mul(2.0**e).float()
    return tensors[f"{name}.float32"]


def verify_dump(path: str | Path, model: nn.Module | None = None, *, strict: bool = True) -> dict:
    """Recompute the step recorded in ``path`` and compare every tensor bit for bit.

    ``model``: a model of the same architecture (its values are replaced from the dump); default:
    rebuilt from the dump's ``create_model`` record. Also re-derives W, U and momentum of every
    quantized parameter from U0 and G in integer arithmetic. Returns ``{"compared", "mismatches",
    "arithmetic_checks"}``; with ``strict`` a mismatch raises ``DeployError`` naming the tensors.
    """
    from ..convert import quantize_
    from ..models import create_model

    path = Path(path)
    tensors, meta = _read(path)
    try:
        config = WAGEUBNConfig(**json.loads(meta["config"]))
        opt_cfg = json.loads(meta["optimizer"])
        spec = json.loads(meta["model"])
        names = json.loads(meta["names"])
        bn_momentum = json.loads(meta.get("bn_momentum", "{}"))
    except (KeyError, ValueError, TypeError) as exc:
        raise DeployError(f"{path}: corrupt golden-step metadata ({exc})") from None
    missing = [n for n in names if n not in tensors]
    if missing:
        raise DeployError(f"{path}: tensors {missing[:5]} listed but missing")
    if model is None:
        if not spec.get("name"):
            raise ValueError(
                f"verify_dump: {path} does not name its model (dump_step without model_name); "
                "pass model= a model of the same architecture"
            )
        model = quantize_(create_model(spec["name"], **spec.get("kwargs", {})), config)
    elif config_or_none(model) != config:
        raise ValueError(
            f"verify_dump: model= must be quantized with the dump's config ({config.name!r}: "
            f"{meta['config']}); got {config_or_none(model)!r}"
        )
    with _restored(model):  # a caller's model gets its values back afterwards
        saved = {n: m.momentum for n, m in model.named_modules() if n in bn_momentum}
        for n, m in model.named_modules():
            if n in bn_momentum:  # the running-statistics factor is a module attribute
                m.momentum = bn_momentum[n]
        try:
            return _compare(path, model, tensors, meta, config, opt_cfg, strict)
        finally:
            for n, m in model.named_modules():
                if n in saved:
                    m.momentum = saved[n]


def _compare(path, model, tensors, meta, config, opt_cfg, strict: bool) -> dict:
    with torch.no_grad():
        for mname, mod in model.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                p.copy_(_decode(tensors, meta, f"{_param_prefix(mname, mod, pname)}.U0"))
            if isinstance(mod, nn.BatchNorm2d) and mod.running_mean is not None:
                mod.running_mean.copy_(tensors[f"{mname}.running_mean.U0.float32"])
                mod.running_var.copy_(tensors[f"{mname}.running_var.U0.float32"])
                mod.num_batches_tracked.copy_(tensors[f"{mname}.num_batches_tracked.U0.int64"])
    opt_cfg = {k: v for k, v in opt_cfg.items() if k in _OPT_KEYS}
    batch = (tensors["input.x.float32"], tensors["input.labels.int64"])
    again = _record_step(model, batch, opt_cfg)
    mismatches = []
    for key in sorted(set(again) | set(tensors)):
        if key not in again or key not in tensors:
            mismatches.append(f"{key} (present in only one)")
            continue
        t, e = again[key]
        stored = tensors[key]
        exp_ok = e is None or meta.get(key.removesuffix(".codes") + ".exp") == str(e)
        if (
            t.dtype != stored.dtype
            or t.shape != stored.shape
            or not exp_ok
            or not torch.equal(t, stored)
        ):
            mismatches.append(key)
    arithmetic = _arithmetic_checks(tensors, meta, config, opt_cfg, mismatches)
    result = {"compared": len(again), "mismatches": mismatches, "arithmetic_checks": arithmetic}
    if strict and mismatches:
        raise DeployError(
            f"{path}: {len(mismatches)} of {len(again)} tensors differ from the recomputation: "
            + ", ".join(mismatches[:8])
        )
    return result


def _rne(n: torch.Tensor, shift: int) -> torch.Tensor:
    """Round-half-even of ``n / 2^shift`` (``shift >= 0``) on integers."""
    if shift == 0:
        return n
    q = torch.div(n, 2**shift, rounding_mode="floor")
    r2 = (n - q * 2**shift) * 2
    return q + ((r2 > 2**shift) | ((r2 == 2**shift) & (q.remainder(2) == 1))).to(torch.int64)


def _arithmetic_checks(tensors, meta, cfg: WAGEUBNConfig, opt_cfg, mismatches: list[str]) -> int:
    """Integer re-derivations for every quantized parameter with ``U0``, ``G`` and ``U`` codes:
    ``W = clip(RNE(U0 / 2^(eW − eU)))``, momentum ``= RNE(G · 2^(eG − eM))`` (first step: the
    buffer is G), ``U = RNE(U0 − lr_q·acc)`` on the U grid. Appends failures; returns the count."""
    lr_q = Fraction(quantized_lr(opt_cfg["lr"], cfg))
    count = 0
    for key in tensors:
        if not key.endswith(".U0.codes"):
            continue
        prefix = key.removesuffix(".U0.codes")
        if f"{prefix}.G.codes" not in tensors or f"{prefix}.U.codes" not in tensors:
            continue
        e_u = int(meta[f"{prefix}.U0.exp"])
        u0 = tensors[key].to(torch.int64)
        g = tensors[f"{prefix}.G.codes"].to(torch.int64)
        e_g = int(meta[f"{prefix}.G.exp"])
        if f"{prefix}.W.codes" in tensors:
            e_w = int(meta[f"{prefix}.W.exp"])
            top = 2 ** (cfg.weight - 1) - 1
            w = _rne(u0, e_w - e_u).clamp(-top, top)
            count += 1
            if not torch.equal(w, tensors[f"{prefix}.W.codes"].to(torch.int64)):
                mismatches.append(f"{prefix}.W (integer re-derivation from U0)")
        acc = g  # first step from a zero buffer: acc = m·0 + G
        if f"{prefix}.momentum.codes" in tensors:
            e_m = int(meta[f"{prefix}.momentum.exp"])
            count += 1
            if not torch.equal(
                _rne(g, e_m - e_g), tensors[f"{prefix}.momentum.codes"].to(torch.int64)
            ):
                mismatches.append(f"{prefix}.momentum (integer re-derivation from G)")
        # U·2^e_u = U0·2^e_u − lr_q·acc·2^e_g  →  codes on the 2^e_lo grid, then RNE to e_u
        step = lr_q * Fraction(2) ** e_g
        e_lo = min(e_u, e_g - (step.denominator.bit_length() - 1) + 0)
        scale = Fraction(2) ** -e_lo
        mult = step * scale
        if mult.denominator != 1:
            continue  # lr_q · G is off every binary grid: nothing exact to check
        u = _rne(u0 * int(Fraction(2) ** e_u * scale) - acc * int(mult), e_u - e_lo)
        count += 1
        if not torch.equal(u, tensors[f"{prefix}.U.codes"].to(torch.int64)):
            mismatches.append(f"{prefix}.U (integer re-derivation from U0, G, lr)")
    return count
