"""Integer gradient all-reduce for ``torch.distributed`` / ``DistributedDataParallel``.

``integer_allreduce_hook`` is a DDP communication hook: each gradient bucket travels as integer
codes with one power-of-two exponent that all ranks agree on, so the reduction is an exact integer
sum — independent of the order in which the ranks' contributions are added and of the world's
layout — and every rank decodes the same bits::

    e     = all_reduce_MAX( smallest e with max|g_rank| <= (2^(b−1) − 1)·2^e )   # one int per bucket
    codes = round(g_rank / 2^e)                       # |codes| <= 2^(b−1) − 1, ties to even
    sum   = all_reduce_SUM(codes)                     # int32 (or int16 when it cannot overflow)
    g     = sum · 2^e / world_size                    # the averaged gradient, as DDP expects

``b`` (``code_bits``, default 24) trades precision for bytes: the codes travel in the smallest
container whose sum of ``world_size`` codes is exact in any order (``transport_dtype``): int32 for
24-bit codes (the same bytes as an fp32 all-reduce, plus one int per bucket); float16 — integers
summed exactly while every partial sum stays <= 2^11 — for ``b <= 12 − log2(W)`` (half the
bytes); int8 for ``b <= 8 − log2(W)`` (a quarter). gloo and NCCL have no int16 reduction. The gradient is rounded once, to ``b`` bits relative to the largest
magnitude in its bucket across all ranks; in WAGEUBN the optimizer then applies ``CQ`` (8 bits) to
it anyway. Division by a world size that is not a power of two rounds once more (float32).

    model = DistributedDataParallel(model)
    model.register_comm_hook(IntegerAllReduceState(code_bits=24), integer_allreduce_hook)
"""

# No ``from __future__ import annotations``: DDP checks the hook's annotations at registration.
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .quant.functions import mul_pow2, range_exponent_of
from .quant.rounding import finite_minmax

__all__ = ["IntegerAllReduceState", "integer_allreduce_hook", "transport_dtype"]


# Containers in which a sum of integer codes is exact, whatever the order of additions: an int8
# or int32 sum that cannot overflow, or float16 while every partial sum is an integer <= 2^11
# (torch.distributed's gloo and NCCL have no int16 reduction). (dtype, largest exact sum)
_TRANSPORTS = ((torch.int8, 127), (torch.float16, 2**11), (torch.int32, 2**31 - 1))


def transport_dtype(code_bits: int, world_size: int) -> torch.dtype:
    """The smallest container in which the sum of ``world_size`` codes of ``code_bits`` bits is exact."""
    if isinstance(code_bits, bool) or not isinstance(code_bits, int) or not 2 <= code_bits <= 31:
        raise ValueError(f"code_bits must be an int in [2, 31], got {code_bits!r}")
    top = world_size * (2 ** (code_bits - 1) - 1)
    for dtype, limit in _TRANSPORTS:
        if top <= limit:
            return dtype
    raise ValueError(
        f"{world_size} ranks × {code_bits}-bit codes can overflow int32; "
        f"use code_bits <= {31 - math.ceil(math.log2(world_size))}"
    )


@dataclass
class IntegerAllReduceState:
    """State of ``integer_allreduce_hook``: code width, process group, and byte counters."""

    code_bits: int = 24
    process_group: "dist.ProcessGroup | None" = None
    bytes_sent: int = 0
    """Payload bytes this rank contributed to all-reduces (codes and exponents)."""
    fp32_bytes: int = 0
    """What the same buckets would have cost as an fp32 all-reduce."""
    buckets: int = 0
    exponents: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.code_bits, bool) or not isinstance(self.code_bits, int):
            raise TypeError(f"code_bits must be an int, got {self.code_bits!r}")
        transport_dtype(self.code_bits, 1)  # validates the range


def integer_allreduce_hook(
    state: IntegerAllReduceState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: exact integer all-reduce of a gradient bucket (see the module docstring)."""
    group = state.process_group
    world = dist.get_world_size(group)
    buf = bucket.buffer()
    lo, hi = finite_minmax(buf, f"gradient bucket {bucket.index()}")
    e_local = range_exponent_of(max(hi, -lo), state.code_bits)
    # an all-zero bucket on this rank must not pull the agreed exponent down
    exp = torch.tensor(
        [-(2**30) if e_local is None else e_local], dtype=torch.int64, device=buf.device
    )
    dist.all_reduce(exp, op=dist.ReduceOp.MAX, group=group)
    e = int(exp.item())
    dtype = transport_dtype(state.code_bits, world)
    if e == -(2**30):  # every rank's bucket is zero
        codes = torch.zeros(buf.shape, dtype=dtype, device=buf.device)
        e = 0
    else:
        codes = mul_pow2(buf, -e).round_().to(dtype)  # exact: |codes| <= 2^(b−1) − 1
    state.bytes_sent += codes.numel() * codes.element_size() + exp.element_size()
    state.fp32_bytes += buf.numel() * 4
    state.buckets += 1
    state.exponents.append(e)
    fut = dist.all_reduce(codes, op=dist.ReduceOp.SUM, group=group, async_op=True).get_future()

    def decode(f: torch.futures.Future) -> torch.Tensor:
        total = f.value()[0]
        grad = mul_pow2(total.to(buf.dtype), e)
        if world & (world - 1) == 0:
            grad = mul_pow2(grad, -int(math.log2(world)))  # exact
        else:
            grad.div_(world)
        buf.copy_(grad)
        return buf

    return fut.then(decode)
