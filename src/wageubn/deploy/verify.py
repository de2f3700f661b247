"""Reading a golden-tensor dump back and checking it: ``verify_dump(path)`` (docs/golden-tensors.md).

The dump's inputs and stored weights are loaded into the model (rebuilt from the dump's model name
when none is given), the step is recomputed with the recorder of ``wageubn.deploy.golden``, and
every tensor is compared bit for bit; then W, U and momentum are re-derived with integer
arithmetic from the codes alone.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ..config import WAGEUBNConfig
from ..convert import config_or_none
from ..optim import quantized_lr
from .format import DeployError
from .golden import FORMAT, OPTIMIZER_KEYS, VERSION, param_prefix, record_step, restored

__all__ = ["verify_dump"]


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
    with restored(model):  # a caller's model gets its values back afterwards
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
                p.copy_(_decode(tensors, meta, f"{param_prefix(mname, mod, pname)}.U0"))
            if not isinstance(mod, nn.BatchNorm2d):
                continue
            mean, var, count = mod.running_mean, mod.running_var, mod.num_batches_tracked
            if mean is not None and var is not None and count is not None:  # tracked: all three
                mean.copy_(tensors[f"{mname}.running_mean.U0.float32"])
                var.copy_(tensors[f"{mname}.running_var.U0.float32"])
                count.copy_(tensors[f"{mname}.num_batches_tracked.U0.int64"])
    opt_cfg = {k: v for k, v in opt_cfg.items() if k in OPTIMIZER_KEYS}
    batch = (tensors["input.x.float32"], tensors["input.labels.int64"])
    again = record_step(model, batch, opt_cfg)
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
            top = 2 ** (cast(int, cfg.weight) - 1) - 1  # W codes recorded: W is quantized
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
