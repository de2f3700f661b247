"""Reproduction: fp32 vs ``paper`` vs ``paper_e2_16`` (and ``int8``) with the same seeds and epochs.

* small CNN on MNIST — configs/mnist_cnn_{fp32,paper,paper_e2_16,int8}.yaml, 1 epoch each;
* pre-activation ResNet-20 on Fashion-MNIST — configs/fashion_resnet20_{fp32,paper,paper_e2_16,int8}.yaml
  with a short recipe
  (``--fashion-epochs``, default 3, lr 0.25, constant dr 128) that fits the 2-core budget.

Writes ``benchmarks/results/reproduce.md`` (the table the README shows) and ``reproduce.json``,
and keeps every run directory under ``--out`` (default ``runs/reproduce``). About 30 minutes on
2 cores with the defaults::

    python benchmarks/reproduce.py
    python benchmarks/reproduce.py --fashion-epochs 1 --skip-mnist   # quicker look
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from wageubn.train import load_run_config, train

ROOT = Path(__file__).resolve().parents[1]
PAPER_GAPS = "ResNet-18 −1.3, ResNet-34 −3.5, ResNet-50 −5.6 points (ImageNet top-1, §4)"


def run(config: str, overrides: list[str], out: Path, name: str) -> dict:
    cfg = load_run_config(
        ROOT / "configs" / config,
        [*overrides, "--train.out_dir", str(out), "--train.run_name", name, "--train.threads", "2"],
    )
    t0 = time.perf_counter()
    result = train(cfg)
    return {
        "name": name,
        "config": config,
        "overrides": overrides,
        "acc": result["eval"]["acc"],
        "loss": result["eval"]["loss"],
        "epochs": cfg.train.epochs,
        "steps": result["step"],
        "wall_s": time.perf_counter() - t0,
        "run_dir": result["run_dir"],
    }


def table(rows: list[dict], title: str) -> list[str]:
    fp32 = next((r["acc"] for r in rows if r["name"].endswith("fp32")), None)
    lines = [f"**{title}**", "", "| preset | test accuracy | gap to fp32 | epochs | steps | wall time |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        preset = r["name"].split("-", 1)[1]
        gap = "—" if fp32 is None or preset == "fp32" else f"{(r['acc'] - fp32) * 100:+.2f}"
        lines.append(
            f"| {preset} | {r['acc'] * 100:.2f}% | {gap} | {r['epochs']} | {r['steps']} | "
            f"{r['wall_s'] / 60:.1f} min |"
        )
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--fashion-epochs", type=int, default=3)
    p.add_argument("--skip-mnist", action="store_true")
    p.add_argument("--skip-fashion", action="store_true")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()
    mnist, fashion = [], []
    if not args.skip_mnist:
        for preset in ("fp32", "paper", "paper_e2_16", "int8"):
            mnist.append(run(f"mnist_cnn_{preset}.yaml", [], out, f"mnist-{preset}"))
            print(mnist[-1], flush=True)
    if not args.skip_fashion:
        e = args.fashion_epochs
        short = ["--train.epochs", str(e), "--optim.lr", "0.25", "--optim.lr_milestones", "[]",
                 "--optim.lr_multipliers", "[1.0]", "--optim.grad_range_values", "[128]"]  # fmt: skip
        for preset in ("fp32", "paper", "paper_e2_16", "int8"):
            fashion.append(run(f"fashion_resnet20_{preset}.yaml", short, out, f"fashion-{preset}"))
            print(fashion[-1], flush=True)
    total = time.perf_counter() - t0
    lines = [
        f"Measured with `python benchmarks/reproduce.py` (total {total / 60:.0f} min) on "
        f"{platform.machine()} with 2 threads, torch {torch.__version__}; seed 0 for every run.",
        "",
    ]
    if mnist:
        lines += table(
            mnist,
            "Small CNN on MNIST (50k train, 10k test), 1 epoch, batch 32, lr 0.25, momentum 1/4",
        )
    if fashion:
        lines += table(
            fashion,
            f"Pre-activation ResNet-20 on Fashion-MNIST (60k train, 10k test), {args.fashion_epochs} "
            "epochs, batch 128, lr 0.25, momentum 1/4, dr 128",
        )
    lines.append(f"The paper's reported ImageNet gaps for comparison: {PAPER_GAPS}.")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "reproduce.md").write_text("\n".join(lines) + "\n")
    (results / "reproduce.json").write_text(
        json.dumps({"mnist": mnist, "fashion": fashion}, indent=2) + "\n"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
