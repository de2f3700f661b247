"""Models a user brings, trained on MNIST in fp32, ``paper`` and ``int8``: the gap to fp32.

* torchvision's MobileNetV2 (width 0.5; ReLU6, depthwise convolutions) —
  configs/zoo_mnist_mobilenet_v2.yaml (``--model.name torchvision:mobilenet_v2``);
* a small Vision Transformer (torchvision's ``VisionTransformer``: patch 4, 4 blocks, width 128,
  4 heads; LayerNorm, GELU, MultiheadAttention) — configs/zoo_mnist_vit.yaml
  (``--model.name torchvision.models:VisionTransformer``).

Every run: the same seed, ``--train-subset`` training images (the first N of MNIST's 50k), one
pass each ``--epochs``, batch 64, momentum 1/4, the lr of the config (fp32 at its own lr where
``FP32_OVERRIDES`` names one), evaluated on the 10k test images.
Writes ``benchmarks/results/zoo_reproduce.md`` (the README's table) and ``zoo_reproduce.json``::

    python benchmarks/zoo_reproduce.py                       # ~1 h on 2 busy cores
    python benchmarks/zoo_reproduce.py --train-subset 50000  # the whole training set
    python benchmarks/zoo_reproduce.py --models vit --merge earlier/zoo_reproduce.json
    (a model trained now replaces that model's rows of the merged file)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from reproduce import table  # the same table layout as the README's other reproduction rows

from wageubn.train import load_run_config, train

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "mobilenet_v2": (
        "zoo_mnist_mobilenet_v2.yaml",
        "MobileNetV2 (torchvision, width 0.5): `paper`/`int8` with the depthwise recipe — lr 0.25, "
        "stem and head quantized, `grad_scale: channel`, no weight decay; fp32 at lr 0.125",
    ),
    "vit": (
        "zoo_mnist_vit.yaml",
        "ViT (torchvision VisionTransformer: patch 4, 4 blocks, width 128), lr 0.125",
    ),
}
# fp32's own lr for a model whose quantized recipe takes a larger one (docs/accuracy.md: the
# quantized layers want about twice fp32's lr)
FP32_OVERRIDES: dict[str, list[str]] = {"mobilenet_v2": ["--optim.lr", "0.125"]}
PRESETS = ("fp32", "paper", "int8")


def run(model: str, preset: str, args: argparse.Namespace, name: str) -> dict:
    config = MODELS[model][0]
    overrides = [
        "--quant.preset", preset, *(FP32_OVERRIDES.get(model, []) if preset == "fp32" else []),
        "--train.epochs", str(args.epochs), "--data.train_subset", str(args.train_subset),
        "--train.out_dir", str(args.out), "--train.run_name", name,
        "--train.threads", str(args.threads),
    ]  # fmt: skip
    cfg = load_run_config(ROOT / "configs" / config, overrides)
    t0 = time.perf_counter()
    result = train(cfg)
    return {
        "name": name,
        "config": config,
        "preset": preset,
        "command": f"wageubn train configs/{config} "
        + " ".join(overrides[: overrides.index("--train.out_dir")]),
        "acc": result["eval"]["acc"],
        "loss": result["eval"]["loss"],
        "epochs": cfg.train.epochs,
        "steps": result["step"],
        "wall_s": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/zoo_reproduce", type=Path)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-subset", type=int, default=10000)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument(
        "--merge",
        nargs="*",
        default=[],
        type=Path,
        help="zoo_reproduce.json files of earlier invocations whose runs join this table",
    )
    args = p.parse_args(argv)
    rows: dict[str, list[dict]] = {}
    for path in args.merge:
        for model, model_rows in json.loads(path.read_text()).items():
            if model not in args.models:  # a model trained now replaces its earlier rows
                rows.setdefault(model, []).extend(model_rows)
    for model in args.models:
        for preset in args.presets:
            rows.setdefault(model, []).append(run(model, preset, args, f"{model}-{preset}"))
            print(rows[model][-1], flush=True)
    for model_rows in rows.values():
        model_rows.sort(key=lambda r: PRESETS.index(r["preset"]))
    total = sum(r["wall_s"] for model_rows in rows.values() for r in model_rows)
    lines = [
        f"Measured with `python benchmarks/zoo_reproduce.py {' '.join(argv or sys.argv[1:])}` "
        f"(runs total {total / 60:.0f} min) on {platform.machine()}, {args.threads} thread(s) "
        f"per run trained now (merged rows: their own), torch {torch.__version__}; seed 0 "
        f"for every run; MNIST, the first {args.train_subset} training images, the 10k test "
        "images; batch 64, momentum 1/4.",
        "",
    ]
    for model, model_rows in rows.items():
        lines += table(model_rows, MODELS[model][1])
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "zoo_reproduce.md").write_text("\n".join(lines) + "\n")
    (results / "zoo_reproduce.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
