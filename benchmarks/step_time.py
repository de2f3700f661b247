"""Time one training step (forward, backward, update) and the memory saved for backward.

Variants, all from the same process and interleaved round by round (so drift hits them alike):

* ``fp32``        — plain PyTorch (``torch.optim.SGD``), channels_last: the honest baseline;
* ``fp32-nchw``   — the same in PyTorch's default layout;
* ``paper``       — WAGEUBN ``paper`` preset, integers simulated in float32;
* ``int8``        — WAGEUBN ``int8`` preset: conv/linear products on int8 kernels.

Reports the median step time over the timed rounds (after warm-up), its ratio to ``fp32``, and
the bytes of activations saved for backward (unique storages recorded by
``torch.autograd.graph.saved_tensors_hooks``, parameters excluded), also as a ratio to ``fp32``.

    python benchmarks/step_time.py --model preact_resnet20 --batch 128 --size 32
    python benchmarks/step_time.py --model small_cnn --batch 128 --size 28 --in-channels 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from wageubn import QSGD, WAGEUBNConfig, quantize_
from wageubn.models import create_model

VARIANTS = ("fp32", "fp32-nchw", "paper", "int8")


def build(variant: str, args):
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, in_channels=args.in_channels)
    if variant.startswith("fp32"):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.25, weight_decay=1e-4)
    else:
        cfg = WAGEUBNConfig.preset(variant)
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
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return model, x, y, step


def saved_bytes(model, x, y) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


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
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    built = {v: build(v, args) for v in variants}
    mem = {v: saved_bytes(*built[v][:3]) for v in variants}
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
        f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}; "
        f"median of {args.rounds} steps after {args.warmup} warm-up"
    )
    print()
    print("| variant | step ms | × fp32 | saved activations MiB | × fp32 |")
    print("|---|---|---|---|---|")
    for v in variants:
        t = statistics.median(times[v])
        rt = f"{t / base_t:.2f}" if base_t else "-"
        rm = f"{mem[v] / base_m:.2f}" if base_m else "-"
        print(f"| {v} | {t * 1e3:.0f} | {rt} | {mem[v] / 2**20:.1f} | {rm} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
