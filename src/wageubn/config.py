"""The numerical contract as a frozen dataclass: every quantized role, its bits, and the presets;
and ``config_of(model)``: the config a converted model's quantized layers hold (they are its only
owners; ``quantize_`` in ``wageubn.convert`` puts it there).

See docs/WAGEUBN.md §4 (bit widths) and §5 (presets). A role set to ``None`` stays in float.

>>> cfg = WAGEUBNConfig.preset("paper")
>>> cfg.error2, cfg.replace(error2=16).error2
(8, 16)
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from torch import nn

from .core.roles import quantized_layers
from .quant.functions import check_grad_range
from .quant.rounding import MAX_BITS, MIN_BITS

__all__ = ["PRESETS", "ROLES", "WAGEUBNConfig", "config_of", "config_or_none"]

# role -> (paper bits, quantizer, what it is). The order is the contract's table (§4).
ROLES: dict[str, tuple[int, str, str]] = {
    "weight": (8, "QC", "W: conv/linear weights in the forward pass"),
    "activation": (8, "Q", "A: output of every quantized ReLU"),
    "grad": (8, "CQ", "G: gradient of quantized conv/linear weights (with the dr schedule)"),
    "error1": (8, "SQ", "E1: gradient arriving at a quantized activation"),
    "error2": (8, "FQ", "E2: gradient of every quantized conv/linear output"),
    "bn_gamma": (8, "Q", "BN scale gamma"),
    "bn_beta": (8, "Q", "BN shift beta"),
    "bn_xhat": (8, "Q", "BN normalized input x-hat"),
    "bn_mean": (16, "Q", "BN mean mu"),
    "bn_std": (16, "Q", "BN standard deviation sigma (epsilon added after)"),
    "bn_grad": (15, "Q", "gradient of BN gamma and beta"),
    "lr": (10, "QC", "learning rate"),
    "momentum": (13, "Q", "momentum buffer"),
    "update": (24, "Q", "U: stored weights after each update"),
    "weight_init": (16, "Q", "initial quantized conv/linear weights"),
}

_ARITHMETIC = ("simulated", "int8")
_INT8_BACKENDS = ("auto", "cpu", "cuda", "reference", "float")
_GRAD_ROUNDING = ("stochastic", "nearest")
_GRAD_SCALE = ("tensor", "channel")
# Roles whose tensors are GEMM operands: int8 arithmetic needs them at 8 bits or fewer.
_INT8_ROLES = ("weight", "activation", "grad", "error1", "error2")


def _suggest(name: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class WAGEUBNConfig:
    """Bit widths of every WAGEUBN data path (``None`` = float) plus the few switches around them.

    The defaults are the ``paper`` preset: the released code's settings (docs/WAGEUBN.md §4).
    """

    weight: int | None = 8
    """W, ``QC(W, k)`` in the forward pass."""
    activation: int | None = 8
    """A, ``Q(relu(y), k)``."""
    grad: int | None = 8
    """G, ``CQ(g, k, dr)`` for quantized conv/linear weights."""
    error1: int | None = 8
    """E1, ``SQ(dL/da, k)``."""
    error2: int | None = 8
    """E2, ``FQ(dL/dz, k)``; 16 in the second version of the paper (preset ``paper_e2_16``)."""
    bn_gamma: int | None = 8
    """BN ``Q(gamma, k)``."""
    bn_beta: int | None = 8
    """BN ``Q(beta, k)``."""
    bn_xhat: int | None = 8
    """BN ``Q((x − mu_q) / sigma_q, k)``."""
    bn_mean: int | None = 16
    """BN ``Q(mu, k)``."""
    bn_std: int | None = 16
    """BN ``Q(sqrt(var), k) + eps``."""
    bn_grad: int | None = 15
    """``Q(g, k)`` for the gradients of BN gamma and beta."""
    lr: int | None = 10
    """``QC(lr, k)``: with 10 bits the learning rate is a multiple of 2^-9."""
    momentum: int | None = 13
    """``Q(acc, k)`` of the momentum buffer after each update."""
    update: int | None = 24
    """U: ``Q(p, k)`` of the stored weight after each update."""
    weight_init: int | None = 16
    """``Q(w0, k)`` of the initial quantized conv/linear weights."""
    grad_rounding: str = "stochastic"
    """Rounding of ``CQ``: ``"stochastic"`` (paper) or ``"nearest"``."""
    grad_range: int = 128
    """Initial gradient range ``dr`` of ``CQ`` (the optimizer can schedule it)."""
    grad_scale: str = "tensor"
    """The scale ``R(g)`` of ``CQ``: ``"tensor"`` (paper: one per weight gradient) or
    ``"channel"`` (beyond the paper, opt-in: one per output channel, the slices along dim 0 of
    a weight gradient with 2+ dims — for depthwise convolutions, whose channels' gradients
    differ by orders of magnitude; docs/quantizers.md)."""
    arithmetic: str = "simulated"
    """``"simulated"``: quantized values held in float tensors (``paper``); ``"int8"``: products on
    integer kernels (§6)."""
    int8_backend: str = "auto"
    """Products in ``int8`` arithmetic: ``"auto"`` (fast kernels for the device), ``"cpu"``,
    ``"cuda"``, ``"reference"`` (the int64 oracle) or ``"float"`` (float simulation of the same
    semantics)."""
    quantize_stem: bool = False
    """Also quantize the first ``Conv2d`` (float in the released code)."""
    quantize_head: bool = False
    """Also quantize the last ``Linear`` (float in the released code)."""
    bn_eps: float = 2.0**-15
    """Epsilon added to the quantized standard deviation."""
    name: str = field(default="custom", compare=False)
    """The preset this config came from (informational; not part of equality)."""

    def __post_init__(self) -> None:
        errors: list[str] = []
        for role in ROLES:
            bits = getattr(self, role)
            if bits is None:
                continue
            if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
                errors.append(f"{role}={bits!r} must be an int in [{MIN_BITS}, {MAX_BITS}] or None")
            elif not MIN_BITS <= int(bits) <= MAX_BITS:
                errors.append(
                    f"{role}={bits} is outside [{MIN_BITS}, {MAX_BITS}]; use None to keep it float"
                )
        if self.grad_rounding not in _GRAD_ROUNDING:
            errors.append(
                f"grad_rounding={self.grad_rounding!r} is not one of {_GRAD_ROUNDING}"
                + _suggest(str(self.grad_rounding), _GRAD_ROUNDING)
            )
        if self.grad_scale not in _GRAD_SCALE:
            errors.append(
                f"grad_scale={self.grad_scale!r} is not one of {_GRAD_SCALE}"
                + _suggest(str(self.grad_scale), _GRAD_SCALE)
            )
        if self.arithmetic not in _ARITHMETIC:
            errors.append(
                f"arithmetic={self.arithmetic!r} is not one of {_ARITHMETIC}"
                + _suggest(str(self.arithmetic), _ARITHMETIC)
            )
        if self.int8_backend not in _INT8_BACKENDS:
            errors.append(
                f"int8_backend={self.int8_backend!r} is not one of {_INT8_BACKENDS}"
                + _suggest(str(self.int8_backend), _INT8_BACKENDS)
            )
        try:
            check_grad_range(self.grad_range)
        except (TypeError, ValueError) as exc:
            errors.append(f"grad_range: {exc}")
        for flag in ("quantize_stem", "quantize_head"):
            if not isinstance(getattr(self, flag), bool):
                errors.append(f"{flag}={getattr(self, flag)!r} must be True or False")
        if isinstance(self.bn_eps, bool) or not isinstance(self.bn_eps, numbers.Real):
            errors.append(f"bn_eps={self.bn_eps!r} must be a number")
        elif not self.bn_eps > 0:
            errors.append(f"bn_eps={self.bn_eps!r} must be > 0")
        if self.arithmetic == "int8":
            for role in _INT8_ROLES:
                bits = getattr(self, role)
                if isinstance(bits, numbers.Integral) and not isinstance(bits, bool):
                    if int(bits) > 8:
                        errors.append(f"arithmetic='int8' needs {role} <= 8 bits, got {bits}")
                elif bits is None:
                    errors.append(f"arithmetic='int8' needs {role} quantized (<= 8 bits), got None")
            if self.grad_range > 128:
                errors.append(f"arithmetic='int8' needs grad_range <= 128, got {self.grad_range}")
        if errors:
            raise ValueError("invalid WAGEUBNConfig:\n  " + "\n  ".join(errors))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> WAGEUBNConfig:
        """One of ``paper``, ``paper_e2_16``, ``fp32``, ``int8`` (docs/WAGEUBN.md §5)."""
        if not isinstance(name, str):
            raise TypeError(f"preset name must be a str, got {type(name).__name__}")
        if name not in PRESETS:
            raise ValueError(
                f"unknown preset {name!r}; choose one of {sorted(PRESETS)}"
                + _suggest(name, list(PRESETS))
            )
        return cls(**PRESETS[name], name=name)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WAGEUBNConfig:
        """Build from a mapping; ``preset`` (optional) is applied first, the other keys override it.

        Unknown keys are an error with a close-match suggestion.
        """
        if not isinstance(values, dict):
            raise TypeError(f"config must be a mapping, got {type(values).__name__}")
        values = dict(values)
        base = cls.preset(values.pop("preset")) if "preset" in values else cls()
        return base.replace(**values)

    def replace(self, **changes: Any) -> WAGEUBNConfig:
        """A copy with some fields changed (validated; unknown names get a suggestion)."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = [k for k in changes if k not in names]
        if unknown:
            raise ValueError(
                "unknown WAGEUBNConfig field(s): "
                + ", ".join(f"{k!r}{_suggest(k, names)}" for k in unknown)
                + f"; roles are {list(ROLES)}"
            )
        if changes and "name" not in changes:
            changes["name"] = "custom"
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- queries ------------------------------------------------------------------------------
    def bits(self, role: str) -> int | None:
        """The bits of a role (``None`` = float); unknown roles get a suggestion."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}" + _suggest(role, list(ROLES)))
        return getattr(self, role)

    @property
    def quantizes_anything(self) -> bool:
        return any(getattr(self, role) is not None for role in ROLES)

    @property
    def bn_quantized(self) -> bool:
        return any(
            getattr(self, r) is not None
            for r in ("bn_gamma", "bn_beta", "bn_xhat", "bn_mean", "bn_std")
        )


_FLOAT = {role: None for role in ROLES}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "paper_e2_16": {"error2": 16},
    "fp32": dict(_FLOAT),
    "int8": {"arithmetic": "int8"},
}


def config_of(model: nn.Module) -> WAGEUBNConfig:
    """The ``WAGEUBNConfig`` of a model converted by ``quantize_``: the one its quantized layers hold.

    The layers are the only owners of the config (each has ``.config``); this checks that they all
    agree. Raises ``ValueError`` for a model with no quantized layer (never converted, or every
    module excluded by ``filter_fn``) and for layers that disagree (naming them: convert the whole
    model with one ``quantize_(model, config)`` call).
    """
    found = config_or_none(model)
    if found is None:
        raise ValueError(
            f"config_of: the {type(model).__name__} has no quantized layer (no wageubn.nn module); "
            "convert it first with quantize_(model, config)"
        )
    return found


def config_or_none(model: nn.Module) -> WAGEUBNConfig | None:
    """``config_of(model)``, or ``None`` for a model without quantized layers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"config_of: model must be an nn.Module, got {type(model).__name__}")
    layers = [(name or "the model", cast(_Layer, m).config) for name, m in quantized_layers(model)]
    if not layers:
        return None
    groups: list[tuple[WAGEUBNConfig, list[str]]] = []  # distinct configs, in network order
    for name, c in layers:
        for held, names in groups:
            if held == c:
                names.append(name)
                break
        else:
            groups.append((c, [name]))
    if len(groups) > 1:
        first = groups[0][0]

        def who(names: list[str]) -> str:
            return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

        others = "; ".join(
            f"{who(names)} hold {c.name!r} with {_config_diff(first, c)}" for c, names in groups[1:]
        )
        raise ValueError(
            f"config_of: the quantized layers disagree: {who(groups[0][1])} hold {first.name!r}; "
            f"{others}; convert the model with one quantize_(model, config) call"
        )
    return layers[0][1]


class _Layer(Protocol):
    """A quantized layer, as far as its config goes (``wageubn.core.roles.QuantModule``)."""

    config: WAGEUBNConfig


def _config_diff(ref: WAGEUBNConfig, other: WAGEUBNConfig) -> str:
    """``other``'s fields that differ from ``ref``'s, as ``name=value (not ref_value)``."""
    a, b = ref.to_dict(), other.to_dict()
    return ", ".join(f"{k}={b[k]!r} (not {a[k]!r})" for k in a if k != "name" and a[k] != b[k])
