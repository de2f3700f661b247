"""QSGD: the quantized Momentum SGD update of WAGEUBN (docs/WAGEUBN.md §3).

Per parameter, in exactly this order::

    g    = dL/dp + wd · p               # weight decay before quantization (not on BN by default)
    G    = CQ(g, k_G, dr)               # quantized conv/linear weights ("weight" role)
         = Q(g, k_GBN)                  # BN gamma/beta ("bn" role)
         = g                            # float parameters (stem, classifier, biases)
    lr_q = QC(lr, k_LR)                 # 10 bits: a multiple of 2^-9; 0 is an error
    acc  = m · acc + G                  # m = 1/4 by default (a shift)
    p    = p − lr_q · acc
    acc  = Q(acc, k_Mom)                # 13 bits   } quantized roles only;
    p    = Q(p, k_U)                    # 24 bits   } float parameters stay float

Which role a parameter has comes from the ``role`` key of its param group if given (``QSGD.from_model``
and ``wageubn.optim.param_groups`` give every group one), else from the quantized layer that holds
it (``wageubn.core.roles``: the layer class declares its parameters' roles), else "float". The
config is the model's (``wageubn.config_of``) unless given, and a given config must agree with the
model's layers on what the optimizer reads (``OPTIMIZER_FIELDS``). The gradient range ``dr`` is
the param-group key ``grad_range`` and can be scheduled like ``lr``.

With the ``fp32`` preset the arithmetic is that of ``torch.optim.SGD(momentum, weight_decay)``
(dampening 0, no Nesterov) bit for bit.

This module owns the optimizer: its arguments, roles, state and the per-parameter update; the
fused update of quantized parameters is ``optim/update.py``, ``QC(lr)`` is ``optim/lr.py``, the
checks before a step (finite gradients, the generator's device) are ``optim/guards.py`` and the
param groups by role and the config check are ``optim/groups.py``.
"""

from __future__ import annotations

import numbers
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch

from ..config import WAGEUBNConfig, config_of
from ..core import roles as param_roles
from ..core.observe import tap
from ..quant import check_grad_range, device
from .groups import check_agrees, config_for, listed, param_groups, tensors_of
from .guards import check_finite_grads, check_generator_device
from .lr import qc_lr, quantized_lr
from .update import buckets, fused_update, memory_order

__all__ = ["QSGD", "ROLES", "quantized_lr"]

ROLES = param_roles.PARAMETER_ROLES


class QSGD(torch.optim.Optimizer):
    """Quantized Momentum SGD (WAGEUBN §3).

    Build it with ``QSGD.from_model(model, lr=...)`` (explicit role groups, the model's config), or
    from parameters as any torch optimizer.

    Args:
        params: parameters or param groups (a group may set ``role``: "weight", "bn" or "float";
            a parameter of a group without one takes the role its quantized layer declares).
        lr: learning rate (quantized to ``config.lr`` bits at every step).
        momentum: ``m`` in ``acc = m·acc + G``; the paper uses 1/4.
        weight_decay: added to the gradient before quantization.
        config: a ``WAGEUBNConfig`` or a preset name. Default: the config of the quantized layers
            holding the parameters, ``paper`` when there are none. A config that disagrees with
            those layers on a field the optimizer reads (``grad``, ``update`` ...) is an error.
        generator: ``torch.Generator`` for the stochastic rounding of ``CQ``; its state is part of
            ``state_dict()``. Default: a new generator seeded from the global torch RNG.
        grad_range: initial ``dr`` (default ``config.grad_range``); per group, schedulable.
        bn_weight_decay: also decay BN γ/β (off in the released recipe).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.25,
        weight_decay: float = 1e-4,
        *,
        config: WAGEUBNConfig | str | None = None,
        generator: torch.Generator | None = None,
        grad_range: int | None = None,
        bn_weight_decay: bool = False,
    ) -> None:
        if isinstance(config, str):
            config = WAGEUBNConfig.preset(config)
        if config is not None and not isinstance(config, WAGEUBNConfig):
            raise TypeError(f"QSGD: config must be a WAGEUBNConfig, got {type(config).__name__}")
        if not isinstance(params, torch.Tensor):  # (a lone tensor: torch's own TypeError below)
            params = [listed(item) for item in params]
        config = config_for(tensors_of(params), config)
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"QSGD: {name} must be a number, got {value!r}")
            if not value >= 0:
                raise ValueError(f"QSGD: {name} must be >= 0, got {value!r}")
        if momentum > 1:
            raise ValueError(
                f"QSGD: momentum must be in [0, 1], got {momentum!r}; the paper uses 0.25"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError("QSGD: generator must be a torch.Generator")
        dr = check_grad_range(config.grad_range if grad_range is None else grad_range)
        self.config = config
        # bare parameters' roles, looked up in the live quantized layers (wageubn.core.roles) once
        # found; a parameter without one is looked up again whenever layers were created
        self._roles: dict[int, tuple[weakref.ReferenceType[torch.Tensor], str]] = {}
        self._roles_at: int | None = None
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "grad_range": dr,
            "bn_weight_decay": bn_weight_decay,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            role = group.get("role")
            if role is not None and role not in ROLES:
                raise ValueError(f"QSGD: param group role must be one of {ROLES}, got {role!r}")
        if generator is None:
            first = next((p for g in self.param_groups for p in g["params"]), None)
            where = first.device if first is not None else torch.device("cpu")
            seed = int(torch.randint(0, 2**62, (1,)).item())
            generator = torch.Generator(device=where).manual_seed(seed)
        self.generator = generator
        self._warned_zero_lr = False
        self._find_roles()  # the layers holding the parameters now (later ones: at first use)
        self._held: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        quantized_lr(lr, config)  # fail at construction, not at the first step
        decayed = any(g["weight_decay"] > 0 for g in self.param_groups)
        if config.grad_scale == "channel" and decayed and config.grad is not None:
            warnings.warn(
                "QSGD: weight decay with grad_scale='channel' drives channels whose gradient is "
                "small to 0 at full CQ steps (docs/quantizers.md); use weight_decay=0",
                RuntimeWarning,
                stacklevel=2,
            )

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        lr: float,
        momentum: float = 0.25,
        weight_decay: float = 1e-4,
        *,
        config: WAGEUBNConfig | str | None = None,
        generator: torch.Generator | None = None,
        grad_range: int | None = None,
        bn_weight_decay: bool = False,
    ) -> QSGD:
        """QSGD over ``wageubn.optim.param_groups(model)`` (one explicit group per role) with the
        model's config (``wageubn.config_of(model)``); a ``config`` given must agree with it.
        Raises ``ValueError`` for a model ``quantize_`` never converted."""
        model_config = config_of(model)
        if config is None:
            config = model_config
        elif isinstance(config, str):
            config = WAGEUBNConfig.preset(config)
        if isinstance(config, WAGEUBNConfig):
            check_agrees(config, model_config, f"the {type(model).__name__}'s quantized layers")
        return cls(
            param_groups(model), lr, momentum, weight_decay, config=config, generator=generator,
            grad_range=grad_range, bn_weight_decay=bn_weight_decay,
        )  # fmt: skip

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._roles_at = None  # its parameters' roles are looked up at their first use

    def role_of(self, p: torch.Tensor, group: dict[str, Any]) -> str:
        """``"weight"``, ``"bn"`` or ``"float"``: the ``role`` of ``p``'s param ``group`` if it has
        one, else the role the quantized layer holding ``p`` declares (``wageubn.core.roles``)."""
        role = group.get("role")
        if role:
            return role
        entry = self._roles.get(id(p))
        if entry is None or entry[0]() is not p:
            if self._roles_at != param_roles.generation():
                self._find_roles()
            entry = self._roles.get(id(p))
        return entry[1] if entry is not None and entry[0]() is p else "float"

    def _find_roles(self) -> None:
        """Look up the parameters of groups without a ``role`` that have none yet."""
        unknown = []
        for group in self.param_groups:
            if not group.get("role"):
                for p in group["params"]:
                    entry = self._roles.get(id(p))
                    if entry is None or entry[0]() is not p:
                        unknown.append(p)
        if unknown:
            found = param_roles.live_roles(unknown)
            self._roles.update((pid, (e.parameter, e.role)) for pid, e in found.items())
        self._roles_at = param_roles.generation()

    # the override differs from torch's stub only in the closure's loss: a Tensor, not a float
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """One update of every parameter with a gradient (the module docstring's order).

        First one check that every gradient is finite — the step's only read of a device value —
        so a step that raises has changed nothing."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        cfg = self.config
        self._check_roles()
        check_finite_grads(self.param_groups, self.role_of)
        for group in self.param_groups:
            lr_q = self._step_lr(group["lr"])
            dr = check_grad_range(group["grad_range"])
            m, wd = group["momentum"], group["weight_decay"]
            fast: dict[tuple[Any, ...], list[torch.Tensor]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                role = self.role_of(p, group)
                obs = tap(p)
                if obs is None and self._fusable(role):  # the fused kernel, grouped below
                    first = m != 0 and "momentum_buffer" not in self.state[p]
                    fast[(role, first, p.device, p.dtype)].append(p)
                    continue
                g = p.grad
                if wd != 0 and (role != "bn" or group["bn_weight_decay"]):
                    g = g.add(p, alpha=wd)
                g_q = self._quantize_grad(g, role, dr)
                if obs is not None and g_q is not g:  # G was quantized: its bits are set
                    kind, bits = ("CQ", cfg.grad) if role == "weight" else ("Q", cfg.bn_grad)
                    obs("G", g, g_q, kind, cast(int, bits), dr=dr)
                g = g_q
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if m != 0:
                    if buf is None:
                        buf = torch.clone(g).detach()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(m).add_(g)
                    g = buf
                old = p.detach().clone() if obs is not None else None
                p.add_(g, alpha=-lr_q)
                if role != "float":
                    if buf is not None and cfg.momentum is not None:
                        acc_q = device.q_direct(buf, cfg.momentum)
                        if obs is not None:
                            obs("momentum", buf, acc_q, "Q", cfg.momentum)
                        buf.copy_(acc_q)
                    if cfg.update is not None:
                        p.copy_(device.q_direct(p, cfg.update))
                if obs is not None:  # then ``old`` is the parameter before the update
                    obs("U", cast(torch.Tensor, old), p.detach(), "Q", cfg.update or 32)
            for (role, first, _, _), params in fast.items():
                self._fused_step(params, role, first, group, lr_q, dr)
        return loss

    def _fusable(self, role: str) -> bool:
        """Whether ``role``'s update runs in the fused kernel: every one of its quantities is on a
        grid (G, lr, momentum, U), where ``lr_q·acc`` is exact and the kernel's arithmetic is
        the per-parameter path's, bit for bit. Others (e.g. the ``fp32`` preset, which must
        equal ``torch.optim.SGD``) take the per-parameter path."""
        cfg = self.config
        bits = cfg.grad if role == "weight" else cfg.bn_grad if role == "bn" else None
        if role == "weight" and cfg.grad_scale == "channel":
            # per-channel CQ runs per parameter (one kernel each): inductor 2.14 fails to compile
            # the multi-parameter update with per-channel scales (KeyError in its scheduler)
            return False
        return None not in (bits, cfg.lr, cfg.momentum, cfg.update)

    def _fused_step(
        self,
        params: list[torch.Tensor],
        role: str,
        first: bool,
        group: dict[str, Any],
        lr_q: float,
        dr: int,
    ) -> None:
        """The per-parameter path above for a list of quantized parameters, as one kernel (by
        device). Weight decay stays an eager ``add`` (its rounding is torch's, as above); the
        stochastic-rounding draws come from ``self.generator`` parameter by parameter, in order."""
        cfg = self.config
        m, wd = group["momentum"], group["weight_decay"]
        decay = wd != 0 and (role != "bn" or group["bn_weight_decay"])
        grads = [cast(torch.Tensor, p.grad) for p in params]  # every one has a gradient
        grads = [g.add(p, alpha=wd) if decay else g for p, g in zip(params, grads, strict=True)]
        bits = cfg.grad if role == "weight" else cfg.bn_grad
        draws = None
        if role == "weight" and bits is not None:
            gen = self.generator
            for g in grads:
                check_generator_device(gen, g)
            if cfg.grad_rounding == "stochastic":
                draws = [torch.rand(g.shape, generator=gen, dtype=g.dtype, device=g.device)
                         for g in grads]  # fmt: skip
        bufs: list[torch.Tensor] = []
        for p, g in zip(params, grads, strict=True):
            if m != 0 and first:
                self.state[p]["momentum_buffer"] = torch.empty_like(g)
            bufs.append(self.state[p]["momentum_buffer"] if m != 0 else g)
        lr_t, dr_t, limit_t = self._scalars(params[0], lr_q, dr)
        flat_params, grads, bufs, draws = memory_order(params, grads, bufs, draws)
        # buckets of 8, 4, 2, 1 parameters: a few compiled variants serve every model (a kernel
        # over all of a ResNet-50's parameters at once takes minutes to compile)
        start = 0
        for size in buckets(len(params)):
            part = slice(start, start + size)
            start += size
            fused_update(
                flat_params[part], grads[part], bufs[part],
                None if draws is None else draws[part], lr_t, dr_t, limit_t, role, bits, float(m), first,
                cfg.momentum, cfg.update,
            )  # fmt: skip

    def _scalars(self, like: torch.Tensor, lr_q: float, dr: int) -> list[torch.Tensor]:
        """``lr_q``, ``dr`` and ``dr − 1`` as 0-dim tensors on ``like``'s device, refilled in place
        each step (a schedule changes values, not tensors: nothing recompiles, nothing is copied
        from the host synchronously)."""
        key = (like.device, like.dtype)
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = [torch.zeros((), dtype=like.dtype, device=like.device)
                                      for _ in range(3)]  # fmt: skip
        for t, v in zip(held, (lr_q, dr, dr - 1), strict=True):
            t.fill_(float(v))
        return held

    def _step_lr(self, lr: float) -> float:
        """``QC(lr)`` for this step; a scheduled lr that quantizes to 0 warns once, updates nothing."""
        if self.config.lr is None:
            return float(lr)
        lr_q = qc_lr(lr, self.config.lr)
        if lr_q == 0.0 and lr != 0 and not self._warned_zero_lr:
            self._warned_zero_lr = True
            warnings.warn(
                f"QSGD: the scheduled lr {lr!r} quantizes to 0 with {self.config.lr} lr bits: "
                "steps apply no update until it grows again (the released recipe decays the "
                "gradient range dr instead of the lr)",
                RuntimeWarning,
                stacklevel=4,  # the caller of step(), past torch.no_grad's wrapper
            )
        return lr_q

    def _check_roles(self) -> None:
        """A quantizing config with no quantized parameter at all is a mistake, not a float run."""
        if self.config.grad is None and self.config.bn_grad is None and self.config.update is None:
            return
        for group in self.param_groups:
            if any(self.role_of(p, group) != "float" for p in group["params"]):
                return
        raise ValueError(
            f"QSGD(config={self.config.name!r}) found no quantized parameter (none held by a "
            "wageubn.nn layer and no param group with a 'role'): call quantize_(model, config) "
            "before building the optimizer, or use config='fp32'"
        )

    def _quantize_grad(self, g: torch.Tensor, role: str, dr: int) -> torch.Tensor:
        cfg = self.config
        if role == "weight" and cfg.grad is not None:
            check_generator_device(self.generator, g)
            return device.q_constant(
                g, cfg.grad, dr, generator=self.generator, rounding=cfg.grad_rounding,
                scale=cfg.grad_scale,
            )  # fmt: skip
        if role == "bn" and cfg.bn_grad is not None:
            return device.q_direct(g, cfg.bn_grad)
        return g

    # -- checkpointing: the stochastic-rounding generator is part of the state -----------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["generator_state"] = self.generator.get_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        gen = state_dict.pop("generator_state", None)
        super().load_state_dict(state_dict)
        if gen is not None:
            self.generator.set_state(gen)
