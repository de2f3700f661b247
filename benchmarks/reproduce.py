"""Reproduction: fp32 vs ``paper`` vs ``paper_e2_16`` vs ``int8`` with the same seeds and epochs.

Sections (``--sections``, comma-separated; default ``mnist_1epoch,fashion_resnet20``):

* ``mnist_1epoch`` — small CNN on MNIST, configs/mnist_cnn_{preset}.yaml, 1 epoch each (the demo's
  recipe; a quick look, not converged);
* ``fashion_resnet20`` — pre-activation ResNet-20 on Fashion-MNIST trained to convergence with the
  accuracy recipe, configs/fashion_resnet20_{preset}.yaml as written (10 epochs, lr ×0.1 at 5 and
  8; the quantized presets at lr 0.5 with the stem and head quantized, fp32 at lr 0.25);
* ``fashion_cnn`` / ``mnist_cnn`` — the small CNN to convergence with the same recipe,
  configs/{fashion,mnist}_cnn_recipe.yaml (fp32: ``--quant.preset fp32 --optim.lr 0.25``).

Each run is an ordinary run directory under ``--out`` (default ``runs/reproduce``): a finished run
is read back, an interrupted one resumes from its ``last.pt`` (bit for bit), so the command can be
stopped and rerun. ``--jobs 2`` trains two runs at once (each with ``cores // jobs`` threads
unless ``--threads`` says otherwise); the wall times are then those of a shared machine.
Writes ``benchmarks/results/reproduce_{section}.md`` (the tables the README and docs/accuracy.md
show) and ``reproduce_{section}.json``::

    python benchmarks/reproduce.py                                  # ~2 h on 2 cores
    python benchmarks/reproduce.py --sections fashion_cnn,mnist_cnn --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PAPER_GAPS = "ResNet-18 −1.3, ResNet-34 −3.5, ResNet-50 −5.6 points (ImageNet top-1, §4)"
PRESETS = ("fp32", "paper", "paper_e2_16", "int8")

# section -> (title, [(run name, config, overrides)])
SECTIONS: dict[str, tuple[str, list[tuple[str, str, list[str]]]]] = {
    "mnist_1epoch": (
        "Small CNN on MNIST (50k train, 10k test), 1 epoch, batch 32, lr 0.25, momentum 1/4",
        [(f"mnist-{p}", f"mnist_cnn_{p}.yaml", []) for p in PRESETS],
    ),
    "fashion_resnet20": (
        "Pre-activation ResNet-20 on Fashion-MNIST (60k train, 10k test), the accuracy recipe: "
        "10 epochs, batch 128, lr ×0.1 at epochs 5 and 8, momentum 1/4, dr 128; quantized "
        "presets at lr 0.5 with the stem and head quantized, fp32 at lr 0.25 "
        "(configs/fashion_resnet20_*.yaml)",
        [(f"fashion-{p}", f"fashion_resnet20_{p}.yaml", []) for p in PRESETS],
    ),
    **{
        f"{data}_cnn": (
            f"Small CNN on {label}, the accuracy recipe: 10 epochs, batch {batch}, lr ×0.1 at "
            "epochs 5 and 8, momentum 1/4; quantized presets at lr 0.5 with the stem and head "
            f"quantized, fp32 at lr {fp32_lr} (configs/{data}_cnn_recipe.yaml)",
            [
                (
                    f"{data}cnn-{p}",
                    f"{data}_cnn_recipe.yaml",
                    ["--quant.preset", "fp32", "--optim.lr", fp32_lr]
                    if p == "fp32"
                    else ["--quant.preset", p],
                )  # fmt: skip
                for p in PRESETS
            ],
        )
        # MNIST at batch 128: at 32 the 8-bit runs' training loss stalls above fp32's
        # (docs/accuracy.md); fp32 at its best lr for each batch
        for data, label, batch, fp32_lr in (
            ("fashion", "Fashion-MNIST (60k train, 10k test)", 32, "0.25"),
            ("mnist", "MNIST (50k train, 10k test)", 128, "0.125"),
        )  # fmt: skip
    },
}


def _same_recipe(run_dir: Path, cfg: Any) -> None:
    """Refuse to read back or resume a run directory trained with another recipe."""
    import yaml

    from wageubn.run.config import RunConfig
    from wageubn.train.resume import recipe_differences

    saved = RunConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    diffs = recipe_differences(cfg, saved.to_dict())
    if diffs:
        text = "; ".join(f"{k} {then!r} there vs {now!r} now" for k, then, now in diffs)
        raise SystemExit(
            f"{run_dir} was trained with another recipe ({text}); remove it or pass another --out"
        )


def _finished(run_dir: Path) -> dict[str, Any] | None:
    """The final evaluation of a completed run directory, or None."""
    from wageubn.train.lifecycle import describe_status
    from wageubn.train.metrics import read_metrics

    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if describe_status(info)[0] != "completed":
        return None
    rows = read_metrics(run_dir)
    evals = [r for r in rows if r.get("kind") == "eval"]
    return {"eval": evals[-1], "step": rows[-1]["step"], "wall_s": rows[-1].get("elapsed_s")}


def run(name: str, config: str, overrides: list[str], out: str, threads: int) -> dict:
    """Train one run (or read it back / resume it) and return its table row."""
    from wageubn.train import load_run_config, train

    run_dir = Path(out) / name
    cfg = load_run_config(
        ROOT / "configs" / config,
        [
            *overrides,
            "--train.out_dir",
            out,
            "--train.run_name",
            name,
            "--train.threads",
            str(threads),
        ],  # fmt: skip
    )
    if (run_dir / "config.yaml").is_file():
        _same_recipe(run_dir, cfg)
    done = _finished(run_dir)
    reused = done is not None
    if done is None:
        resume = run_dir if (run_dir / "last.pt").is_file() else None
        if resume is None and run_dir.exists():
            shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to keep
        train(cfg, resume=resume)
        done = _finished(run_dir)
        if done is None:
            raise RuntimeError(f"{run_dir} did not complete; rerun to resume it")
    row = {
        "name": name,
        "config": config,
        "overrides": overrides,
        "acc": done["eval"]["acc"],
        "loss": done["eval"]["loss"],
        "epochs": cfg.train.epochs,
        "steps": done["step"],
        "wall_s": done["wall_s"],
        "threads": threads,
        "reused": reused,
        "run_dir": str(run_dir),
    }
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict], title: str) -> list[str]:
    fp32 = next((r["acc"] for r in rows if r["name"].endswith("fp32")), None)
    lines = [f"**{title}**", "", "| preset | test accuracy | gap to fp32 | epochs | steps | wall time |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        preset = r["name"].split("-", 1)[1]
        gap = "—" if fp32 is None or preset == "fp32" else f"{(r['acc'] - fp32) * 100:+.2f}"
        wall = "?" if r["wall_s"] is None else f"{r['wall_s'] / 60:.1f} min"
        if r.get("threads"):
            wall += f" ({r['threads']} thr.)"
        lines.append(
            f"| {preset} | {r['acc'] * 100:.2f}% | {gap} | {r['epochs']} | {r['steps']} | {wall} |"
        )
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sections", default="mnist_1epoch,fashion_resnet20",
                   help=f"comma-separated, from {', '.join(SECTIONS)}")  # fmt: skip
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated subset")
    p.add_argument("--seed", type=int, default=0,
                   help="train.seed of every run (not 0: runs under OUT/seedN, results *_seedN)")  # fmt: skip
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (processes)")
    p.add_argument("--threads", type=int, default=None, help="per run (default cores // jobs)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    presets = {s.strip() for s in args.presets.split(",") if s.strip()}
    bad = [s for s in sections if s not in SECTIONS] + [s for s in presets if s not in PRESETS]
    if bad or args.jobs < 1 or (args.threads is not None and args.threads < 1):
        p.error(f"unknown section/preset {bad} (sections: {', '.join(SECTIONS)}; presets: "
                f"{', '.join(PRESETS)}), or --jobs/--threads below 1")  # fmt: skip
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    t0 = time.perf_counter()
    todo = [(s, (name, config, [*over, "--train.seed", str(args.seed)]))
            for s in sections for name, config, over in SECTIONS[s][1]
            if name.split("-", 1)[1] in presets]  # fmt: skip
    out = args.out if args.seed == 0 else str(Path(args.out) / f"seed{args.seed}")
    suffix = "" if args.seed == 0 else f"_seed{args.seed}"
    if args.jobs == 1:
        rows = [run(*spec, out, threads) for _, spec in todo]
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run, *spec, out, threads) for _, spec in todo]
            rows = [f.result() for f in futures]
    print(f"reproduce.py: {(time.perf_counter() - t0) / 60:.0f} min", flush=True)
    runs_min = sum(r["wall_s"] or 0.0 for r in rows) / 60  # read-back runs count their own time
    lines = [
        f"Measured with `python benchmarks/reproduce.py --sections {','.join(sections)}"
        f"{' --jobs ' + str(args.jobs) if args.jobs > 1 else ''}"
        f"{' --threads ' + str(args.threads) if args.threads else ''}"
        f"{' --seed ' + str(args.seed) if args.seed else ''}` (runs total {runs_min:.0f} min"
        f"{', ' + str(args.jobs) + ' at a time' if args.jobs > 1 else ''}) on "
        f"{platform.machine()}, {threads} thread(s) per run, torch {torch.__version__}; seed "
        f"{args.seed} for every run.",
        "",
    ]
    by_section: dict[str, list[dict]] = {}
    for (s, _), row in zip(todo, rows, strict=True):
        by_section.setdefault(s, []).append(row)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for s, srows in by_section.items():  # one file per section: a later run of another keeps it
        text = [*lines, *table(srows, SECTIONS[s][0])]
        text.append(f"The paper's reported ImageNet gaps for comparison: {PAPER_GAPS}.")
        (results / f"reproduce_{s}{suffix}.md").write_text("\n".join(text) + "\n")
        (results / f"reproduce_{s}{suffix}.json").write_text(json.dumps(srows, indent=2) + "\n")
        print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
