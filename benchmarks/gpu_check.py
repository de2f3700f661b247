"""One command for a machine with one CUDA GPU (under 8 minutes): the CUDA correctness tests, a
ResNet-50 step-time table (bf16 autocast vs ``paper`` vs ``int8``) and the host reads per step.

    PYTHONPATH=src python benchmarks/gpu_check.py [--batch 64] [--size 224] [--out DIR]

1. ``pytest tests/test_kernels.py tests/test_int8.py`` — with CUDA present these run the
   ``cuda`` kernel backend bit for bit against the int64 reference, and the int8 layers' products
   on it (the tests parametrize over every available backend).
2. One training step of ``preact_resnet50`` (``torchvision``-free, the paper's model) per variant,
   interleaved: fp32 weights with bf16 autocast + ``torch.optim.SGD`` (the baseline a GPU user
   would pick), ``paper`` and ``int8`` (QSGD with a CUDA generator). Median of the timed steps,
   ``torch.cuda.synchronize()`` around each; peak memory; the first step (which compiles the
   fused kernels with Triton).
3. The host synchronizations of one step (``aten::_local_scalar_dense`` & co. under a
   ``TorchDispatchMode``) — on a GPU each is a stall.

Prints a Markdown table and writes it (and the pytest log) to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from wageubn import QSGD, WAGEUBNConfig, quantize_
from wageubn.models import create_model
from wageubn.profile.syncs import HostSyncs


def run_tests(out: Path | None) -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "tests/test_kernels.py", "tests/test_int8.py"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log = proc.stdout + proc.stderr
    print(log[-3000:])
    if out is not None:
        (out / "gpu_tests.log").write_text(log)
    return proc.returncode


def build(variant: str, batch: int, size: int):
    torch.manual_seed(0)
    model = create_model("preact_resnet50", num_classes=1000).cuda()
    if variant == "bf16-autocast":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.25, weight_decay=1e-4)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        cfg = WAGEUBNConfig.preset(variant)
        quantize_(model, cfg)
        gen = torch.Generator(device="cuda").manual_seed(0)
        opt = QSGD(model.parameters(), lr=0.05, config=cfg, generator=gen)
        autocast = contextlib.nullcontext()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device="cuda").contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 1000, (batch,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def timed(step) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--skip-tests", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    rc = 0 if args.skip_tests else run_tests(args.out)
    variants = ("bf16-autocast", "paper", "int8")
    steps = {v: build(v, args.batch, args.size) for v in variants}
    first = {v: timed(steps[v]) for v in variants}
    syncs = {}
    for v in variants:
        with HostSyncs() as mode:
            steps[v]()
        syncs[v] = mode.count
    for v in variants:
        timed(steps[v])
    times: dict[str, list[float]] = {v: [] for v in variants}
    peak = {}
    for v in variants:
        torch.cuda.reset_peak_memory_stats()
        for _ in range(args.rounds):
            times[v].append(timed(steps[v]))
        peak[v] = torch.cuda.max_memory_allocated() / 2**30
    base = statistics.median(times["bf16-autocast"])
    lines = [
        f"preact_resnet50, batch {args.batch}, 3×{args.size}², {torch.cuda.get_device_name()}, "
        f"torch {torch.__version__}; median of {args.rounds} steps",
        "",
        "| variant | step ms | × bf16 | peak GiB | host syncs / step | first step s |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        t = statistics.median(times[v])
        lines.append(
            f"| {v} | {t * 1e3:.1f} | {t / base:.2f} | {peak[v]:.1f} | {syncs[v]} "
            f"| {first[v]:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        (args.out / "gpu_table.md").write_text(table + "\n")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
