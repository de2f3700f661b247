"""Overhead of the quantization diagnostics (``--diag.every N``).

Times training steps of a quantized model three ways, interleaved round by round: without any
recorder, with a recorder on a step it does not record (the cost of being "on" between recorded
steps), and on a recorded step. The overhead of recording every N steps is then
``(off-step − plain) / plain + (recorded − plain) / (N · plain)``.

    python benchmarks/diagnostics_overhead.py --model preact_resnet20 --size 32 --every 100
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from wageubn import QSGD, WAGEUBNConfig, quantize_
from wageubn.diagnostics import Diagnostics
from wageubn.models import create_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="preact_resnet20")
    p.add_argument("--preset", default="paper")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--rounds", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = WAGEUBNConfig.preset(args.preset)
    model = quantize_(create_model(args.model, num_classes=10, in_channels=args.in_channels), cfg)
    opt = QSGD(model.parameters(), lr=0.05, config=cfg, generator=torch.Generator().manual_seed(0))
    x = torch.randn(args.batch, args.in_channels, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    diag = Diagnostics(model, every=args.every, path=Path(tempfile.mkdtemp()) / "diagnostics.jsonl")

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def off_step():
        with diag.step(1):  # not a recording step
            step()

    def recorded_step():
        with diag.step(0):
            step()

    for _ in range(2):
        step()
    times = {"plain": [], "off": [], "recorded": []}
    for _ in range(args.rounds):
        times["plain"].append(timed(step))
        times["off"].append(timed(off_step))
        times["recorded"].append(timed(recorded_step))
    med = {k: statistics.median(v) for k, v in times.items()}
    off = (med["off"] - med["plain"]) / med["plain"]
    rec = (med["recorded"] - med["plain"]) / (args.every * med["plain"])
    print(
        f"{args.model} {args.preset} batch {args.batch}, median of {args.rounds} rounds, 2 threads"
    )
    print()
    print("| step | ms |")
    print("|---|---|")
    for k in ("plain", "off", "recorded"):
        print(f"| {k} | {med[k] * 1e3:.1f} |")
    print()
    print(
        f"overhead of --diag.every {args.every}: {100 * (off + rec):.2f}% "
        f"(between recordings {100 * off:+.2f}%, recording amortized {100 * rec:.2f}%)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
