"""Time one training step (forward, backward, update), the memory saved for backward, the host
reads per step, and the first step (which compiles the fused kernels).

Variants, all from the same process and interleaved round by round (so drift hits them alike):

* ``fp32``        — plain PyTorch (``torch.optim.SGD``), channels_last: the honest baseline;
* ``fp32-nchw``   — the same in PyTorch's default layout;
* ``paper``       — WAGEUBN ``paper`` preset, integers simulated in float32;
* ``int8``        — WAGEUBN ``int8`` preset: conv/linear products on int8 kernels;
* ``paper-eager`` / ``int8-eager`` (with ``--eager``) — the same with the fused kernels run as
  eager PyTorch (``WAGEUBN_FUSE=0``'s arithmetic), to show what fusion buys.

Reports the median step time over the timed rounds (after warm-up) and its ratio to ``fp32``;
the bytes of activations saved for backward (unique storages recorded by
``torch.autograd.graph.saved_tensors_hooks``, parameters excluded) and their ratio; the host
synchronizations of one step (ops that read a device value on the host, counted by a
``TorchDispatchMode``); and the wall time of the first step, which includes compiling the
fused kernels (in a second process they come from inductor's on-disk cache).

    python benchmarks/step_time.py --model preact_resnet20 --batch 128 --size 32
    python benchmarks/step_time.py --model small_cnn --batch 128 --size 28 --in-channels 1
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from wageubn import QSGD, WAGEUBNConfig, quantize_
from wageubn.models import create_model
from wageubn.profile.syncs import HostSyncs
from wageubn.quant.fusion import fusion

VARIANTS = ("fp32", "fp32-nchw", "paper", "int8")


def _fusion_of(variant: str):
    return fusion(False) if variant.endswith("-eager") else contextlib.nullcontext()


def build(variant: str, args):
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, in_channels=args.in_channels)
    if variant.startswith("fp32"):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.25, weight_decay=1e-4)
    else:
        cfg = WAGEUBNConfig.preset(variant.removesuffix("-eager"))
        quantize_(model, cfg)
        opt = QSGD(
            model.parameters(), lr=0.05, config=cfg, generator=torch.Generator().manual_seed(0)
        )
    channels_last = variant != "fp32-nchw"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.in_channels, args.size, args.size, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), generator=g)

    def step():
        with _fusion_of(variant):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

    return model, x, y, step


def saved_bytes(variant, model, x, y) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with _fusion_of(variant), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def host_syncs(step) -> int:
    """Host reads in one step (the fused kernels run as their eager code under the mode: a
    compiled kernel is one graph and cannot read the host)."""
    with HostSyncs() as mode:
        step()
    return mode.count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="preact_resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--eager", action="store_true", help="also paper-eager and int8-eager")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    if args.eager:
        variants += [v + "-eager" for v in ("paper", "int8") if v in variants]
    built = {v: build(v, args) for v in variants}
    first: dict[str, float] = {}
    for v in variants:  # the first step compiles what it needs
        t0 = time.perf_counter()
        built[v][3]()
        first[v] = time.perf_counter() - t0
    mem = {v: saved_bytes(v, *built[v][:3]) for v in variants}
    syncs = {v: host_syncs(built[v][3]) for v in variants}
    for _ in range(args.warmup):
        for v in variants:
            built[v][3]()
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            t0 = time.perf_counter()
            built[v][3]()
            times[v].append(time.perf_counter() - t0)
    base_t = statistics.median(times["fp32"]) if "fp32" in times else None
    base_m = mem.get("fp32")
    print(
        f"{args.model}, batch {args.batch}, {args.in_channels}×{args.size}×{args.size}, "
        f"torch {torch.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}; median of {args.rounds} steps after "
        f"{args.warmup} warm-up"
    )
    print()
    print(
        "| variant | step ms | × fp32 | saved activations MiB | × fp32 | host syncs / step "
        "| first step s |"
    )
    print("|---|---|---|---|---|---|---|")
    for v in variants:
        t = statistics.median(times[v])
        rt = f"{t / base_t:.2f}" if base_t else "-"
        rm = f"{mem[v] / base_m:.2f}" if base_m else "-"
        print(
            f"| {v} | {t * 1e3:.0f} | {rt} | {mem[v] / 2**20:.1f} | {rm} | {syncs[v]} "
            f"| {first[v]:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
