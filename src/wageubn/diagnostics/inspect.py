"""``wageubn inspect RUN``: where does a run lose precision? A table (worst first) and heat maps."""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..extras import require

__all__ = ["add_parser", "format_table", "heatmaps", "load_rows", "run", "summarize"]

FILE = "diagnostics.jsonl"


def load_rows(run: str | Path) -> list[dict[str, Any]]:
    """The rows of ``RUN/diagnostics.jsonl`` (or of a .jsonl file given directly)."""
    path = Path(run)
    if path.is_dir():
        path = path / FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no diagnostics at {path}; train with --diag.every N (e.g. 100) to record them"
        )
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not a JSON line ({exc.msg})") from None
    if not rows:
        raise ValueError(f"{path} holds no diagnostics rows")
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (layer, role): mean saturation/underflow over steps, last exponent and distinct
    codes, unchanged fraction for U; sorted worst first (by the larger of the two loss rates)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["layer"], r["role"])].append(r)
    out = []
    for (layer, role), rs in groups.items():
        rs.sort(key=lambda r: r["step"])
        sat = sum(r.get("saturation", 0.0) for r in rs) / len(rs)
        und = sum(r.get("underflow", 0.0) for r in rs) / len(rs)
        row = {"layer": layer, "role": role, "kind": rs[-1]["kind"], "bits": rs[-1]["bits"],
               "steps": len(rs), "saturation": sat, "underflow": und,
               "exponent": rs[-1]["exponent"], "distinct": rs[-1]["distinct"]}  # fmt: skip
        if role == "U":
            row["unchanged"] = sum(r.get("unchanged", 0.0) for r in rs) / len(rs)
        out.append(row)
    out.sort(key=lambda r: -max(r["saturation"], r["underflow"], r.get("unchanged", 0.0)))
    return out


def format_table(summary: list[dict[str, Any]], limit: int | None = None) -> str:
    head = f"{'layer':<28} {'role':<9} {'q':<4} {'bits':>4} {'R':>5} {'satur.':>8} {'underfl.':>8} {'codes':>6} {'still':>6}"
    lines = [head, "-" * len(head)]
    for r in summary[:limit]:
        exp = "-" if r["exponent"] is None else str(r["exponent"])
        still = f"{r['unchanged']:.1%}" if "unchanged" in r else ""
        lines.append(
            f"{r['layer'][:28]:<28} {r['role']:<9} {r['kind']:<4} {r['bits']:>4} {exp:>5} "
            f"{r['saturation']:>8.2%} {r['underflow']:>8.2%} {r['distinct']:>6} {still:>6}"
        )
    return "\n".join(lines)


def heatmaps(rows: list[dict[str, Any]], out: str | Path) -> Path:
    """A PNG with two heat maps (saturation, underflow): rows = layer.role, columns = steps.
    For U the underflow map shows the fraction of weights that did not move."""
    matplotlib = require("matplotlib", "plot", "the heat maps of wageubn inspect")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = sorted({(r["layer"], r["role"]) for r in rows})
    steps = sorted({r["step"] for r in rows})
    col = {s: i for i, s in enumerate(steps)}
    idx = {k: i for i, k in enumerate(keys)}
    fig, axes = plt.subplots(1, 2, figsize=(12, max(3.0, 0.22 * len(keys) + 1.5)), squeeze=False)
    for ax, metric in zip(axes[0], ("saturation", "underflow"), strict=True):
        grid = np.full((len(keys), len(steps)), math.nan)
        for r in rows:
            # U has no underflow of its own: its cell shows the fraction of weights that did not move
            value = (
                r.get("unchanged")
                if (metric == "underflow" and r["role"] == "U")
                else r.get(metric)
            )
            if value is not None:
                grid[idx[(r["layer"], r["role"])], col[r["step"]]] = value
        im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="magma", vmin=0)
        ax.set_title(f"{metric} rate")
        ax.set_yticks(range(len(keys)), [f"{layer} {role}" for layer, role in keys], fontsize=6)
        ticks = list(range(0, len(steps), max(1, len(steps) // 8)))
        ax.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=7)
        ax.set_xlabel("step")
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="per-layer quantization diagnostics of a run (table + heat maps)",
        description="Summarize RUN/diagnostics.jsonl (recorded with --diag.every N): worst layers "
        "first, and write saturation/underflow heat maps (layers × steps).",
    )
    p.add_argument("run", help="run directory (or a diagnostics.jsonl file)")
    p.add_argument("--top", type=int, default=25, help="rows of the table (default 25)")
    p.add_argument("--out", default=None, help="heat-map PNG (default RUN/diagnostics.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require("matplotlib", "plot", "the heat maps of wageubn inspect")  # before any output
    rows = load_rows(args.run)
    print(format_table(summarize(rows), args.top))
    run_path = Path(args.run)
    out = args.out or (
        run_path / "diagnostics.png" if run_path.is_dir() else run_path.with_suffix(".png")
    )
    print(f"heat maps: {heatmaps(rows, out)}")
    return 0
