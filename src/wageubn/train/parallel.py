"""Data-parallel training on ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc_per_node=N -m wageubn train CONFIG.yaml`` starts N processes; each finds
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment. ``setup`` joins the process group
(gloo on CPU, NCCL on CUDA), ``check_same_config`` makes sure every rank runs the same config,
``wrap`` puts the model in ``DistributedDataParallel`` with the integer gradient all-reduce
(``wageubn.distributed``), and the trainer gives each rank its slice of every global batch
(``Batches(shard=(rank, world))``). Only rank 0 writes the run directory, metrics and checkpoints.
BatchNorm statistics are per process, as in PyTorch (no SyncBatchNorm).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..core.progress import Progress
from ..run.config import RunConfig, RunConfigError

__all__ = [
    "DistContext",
    "SilentProgress",
    "all_sum",
    "broadcast",
    "check_same_config",
    "device_for",
    "is_timeout",
    "setup",
    "teardown",
    "wrap",
]


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


class SilentProgress(Progress):
    """Ranks other than 0 show no progress."""

    def message(self, text: str) -> None:
        pass


def setup(cfg: RunConfig) -> DistContext:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1; else a 1-process context.

    Checks that the global batch splits over the processes first (every rank raises the same
    `RunConfigError`; the CLI prints it on rank 0 only). Collectives time out after
    ``dist.timeout`` seconds."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    bs = cfg.data.batch_size
    if bs % world:
        low, high = bs // world * world, -(-bs // world) * world
        hint = f"{low} or {high}" if low else f"{high}"
        raise RunConfigError(
            f"data.batch_size {bs} (the global batch) does not split evenly over {world} "
            f"processes (WORLD_SIZE={world}); use a multiple of {world}, e.g. --data.batch_size "
            f"{hint}"
        )
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    initialized_here = False
    if not dist.is_initialized():
        backend = cfg.dist.backend
        if backend == "auto":
            backend = "nccl" if cfg.train.device == "cuda" else "gloo"
        if backend == "nccl" and cfg.train.device != "cuda":
            raise RunConfigError("dist.backend 'nccl' needs train.device 'cuda'; use gloo on CPU")
        dist.init_process_group(backend, timeout=timedelta(seconds=cfg.dist.timeout))
        initialized_here = True
    if dist.get_world_size() != world:
        raise RunConfigError(
            f"WORLD_SIZE={world} but the process group has {dist.get_world_size()} ranks"
        )
    return DistContext(
        rank=rank, world=world, local_rank=local_rank, initialized_here=initialized_here
    )


def teardown(ctx: DistContext, *, clean: bool = True) -> None:
    """Leave the process group. After a failure (``clean=False``) without the barrier: another
    process may never reach it (it failed too, or stopped answering)."""
    if ctx.initialized_here and dist.is_initialized():
        if clean:
            dist.barrier()  # no rank tears the group down while another still talks
        dist.destroy_process_group()


def is_timeout(exc: BaseException) -> bool:
    """A collective that gave up waiting for another process (``dist.timeout``). gloo raises a
    plain RuntimeError ("Timed out waiting 5000ms for send operation to complete", "Application
    timeout caused pair closure"); NCCL a DistBackendError."""
    text = str(exc)
    return (
        isinstance(exc, dist.DistBackendError) or re.search(r"timed? ?out", text, re.I) is not None
    )


def device_for(cfg: RunConfig, ctx: DistContext) -> torch.device:
    if cfg.train.device == "cuda":
        if not torch.cuda.is_available():
            raise RunConfigError("train.device is 'cuda' but CUDA is not available here")
        return torch.device("cuda", ctx.local_rank if ctx.active else torch.cuda.current_device())
    return torch.device("cpu")


def check_same_config(ctx: DistContext, cfg: RunConfig) -> None:
    """Every rank must train the same config: compare hashes, name the ranks that differ."""
    if not ctx.active:
        return
    text = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    digests: list[Any] = [None] * ctx.world
    dist.all_gather_object(digests, digest)
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise RunConfigError(
            f"ranks disagree on the run config (rank 0 has {digests[0]}, ranks {odd} differ): "
            "launch every process with the same CONFIG and overrides"
        )


def broadcast(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.active:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(ctx: DistContext, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    if not ctx.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def wrap(model: nn.Module, cfg: RunConfig, ctx: DistContext, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` with the integer all-reduce hook; ``model`` if 1 process."""
    if not ctx.active:
        return model
    from ..distributed import IntegerAllReduceState, integer_allreduce_hook

    ddp = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    if cfg.dist.integer_allreduce:
        ddp.register_comm_hook(
            IntegerAllReduceState(code_bits=cfg.dist.code_bits), integer_allreduce_hook
        )
    return ddp
