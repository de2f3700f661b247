"""The quantized parameters' update of ``QSGD`` as one fused kernel per parameter group and role.

For every parameter of a list (docs/WAGEUBN.md §3, after weight decay was added to ``g``)::

    G   = CQ(g, k_G, dr)     (role "weight"; uniform draws u)   or   Q(g, k_GBN)   (role "bn")
    acc = G  (first step)    or   m·acc + G
    p   = p − lr_q · acc
    acc = Q(acc, k_Mom)      p = Q(p, k_U)

The same arithmetic as ``QSGD``'s per-parameter path (which diagnostics use), value for value: the
products ``lr_q·acc`` are exact on these grids. ``lr_q`` and ``dr`` are 0-dim tensors, so a
schedule that changes them does not recompile anything; ``p`` and ``acc`` are updated in place.
``buckets`` cuts a group's parameter list into the few list lengths that get compiled;
``memory_order`` hands channels_last operands over as flat vectors.
"""

from __future__ import annotations

import torch

from ..quant import device
from ..quant.device import cq
from ..quant.fusion import fused

__all__ = ["buckets", "fused_update", "memory_order"]


def buckets(n: int) -> list[int]:
    """``n`` as parts of 8, then one each of 4, 2, 1 as needed (``buckets(13) == [8, 4, 1]``)."""
    parts = [8] * (n // 8)
    for size in (4, 2, 1):
        if n % 8 & size:
            parts.append(size)
    return parts


def _q(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    if bits is None:
        return x
    return torch.round(x * (2.0 ** (bits - 1))) * (2.0 ** (1 - bits))


@fused
def fused_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    draws: list[torch.Tensor] | None,
    lr_q: torch.Tensor,
    dr: torch.Tensor,
    dr_limit: torch.Tensor,
    role: str,
    grad_bits: int | None,
    momentum: float,
    first: bool,
    k_mom: int | None,
    k_u: int | None,
) -> None:
    """Update ``params`` (and their momentum buffers ``bufs``) in place; see the module docstring.

    ``draws`` are the stochastic-rounding uniforms of the "weight" role (None: round to
    nearest); with ``momentum == 0`` the buffers are not used."""
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if grad_bits is None:
            gq = g
        elif role == "weight":
            gq = cq(g, g.abs().amax(), None if draws is None else draws[i], grad_bits, dr, dr_limit)
        else:
            gq = _q(g, grad_bits)
        if momentum != 0:
            acc = gq if first else bufs[i] * momentum + gq
            p.copy_(_q(p - lr_q * acc, k_u))
            bufs[i].copy_(_q(acc, k_mom))
        else:
            p.copy_(_q(p - lr_q * gq, k_u))


def memory_order(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    draws: list[torch.Tensor] | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None]:
    """The fused update's operands as 1-D views in memory order where a parameter, its gradient
    and its momentum buffer share one dense layout (channels_last weights): the kernel then runs
    over plain contiguous vectors instead of indexing 4-D strides element by element (a ResNet-18
    bucket: 42 → 12 ms). The draws are made in logical order (element ``i`` for logical element
    ``i``, as the per-parameter path uses them) and copied into that layout first. Others are
    passed as they are (same values, slower)."""
    out_p, out_g, out_b = [], [], []
    out_u: list[torch.Tensor] | None = None if draws is None else []
    for i, (p, g, b) in enumerate(zip(params, grads, bufs, strict=True)):
        p = p.detach()
        u = None if draws is None else draws[i]
        if not p.is_contiguous() and device.is_dense(p) and p.stride() == g.stride() == b.stride():
            if u is not None:
                u = torch.empty_like(g).copy_(u)
            p, g, b = device.flat(p), device.flat(g), device.flat(b)
            u = None if u is None else device.flat(u)
        out_p.append(p)
        out_g.append(g)
        out_b.append(b)
        if out_u is not None and u is not None:
            out_u.append(u)
    return out_p, out_g, out_b, out_u
