"""The table and the bar chart of an ablation (`wageubn.train.ablation.ablate`'s rows).

Table: one line per variant — what changed, the accuracy of the last evaluation (%), the gap to
``baseline`` and to ``fp32`` in percentage points, the optimizer steps and the training time.
Chart: one horizontal bar per variant (accuracy, %), coloured by kind, with the ``baseline`` and
``fp32`` accuracies as vertical lines and each bar's gap to the baseline written at its end; the
axis is zoomed to the accuracies (a 2-point gap at 95 % is invisible on 0–100). matplotlib (the
``plot`` extra) is imported only here, with the Agg backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.files import atomic_write_bytes
from ..core.progress import format_duration
from ..extras import require

__all__ = ["format_table", "plot_ablation", "require_plot", "write_results"]

_FEATURE = "the bar chart of wageubn ablate (--no-plot skips it)"
_COLOURS = {"baseline": "0.35", "fp32": "0.6", "float": "tab:blue", "only": "tab:orange"}


def require_plot() -> Any:
    """matplotlib, or `MissingExtraError` naming ``pip install "torch-wageubn[plot]"``."""
    return require("matplotlib", "plot", _FEATURE)


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table (ends with a newline)."""
    splits = {r["eval_split"] for r in rows if r.get("eval_split")}
    acc = f"{splits.pop()} acc %" if len(splits) == 1 else "acc %"
    header = ("variant", "changed", acc, "vs baseline", "vs fp32", "train loss", "steps", "time")
    lines = [header]
    for r in rows:
        failed = r["acc"] is None
        lines.append(
            (
                r["variant"],
                r["changed"],
                r["status"].split(":")[0] if failed else _num(100 * r["acc"], ".2f"),
                _num(r["gap_to_baseline_pts"], "+.2f"),
                _num(r["gap_to_fp32_pts"], "+.2f"),
                _num(r.get("train_loss"), ".4f"),
                str(r["step"]),
                format_duration(r["wall_s"]) if r["wall_s"] is not None else "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def _colour(name: str) -> str:
    return _COLOURS.get(name, _COLOURS.get(name.partition("-")[0], "tab:purple"))


def plot_ablation(rows: list[dict[str, Any]], out: str | Path) -> Path:
    """Write the bar chart of ``rows`` to ``out`` (PNG); returns its path."""
    matplotlib = require_plot()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    accs = [100 * r["acc"] for r in rows if r["acc"] is not None]
    refs = {r["variant"]: 100 * r["acc"] for r in rows if r["acc"] is not None}
    lo, hi = (min(accs), max(accs)) if accs else (0.0, 100.0)
    pad = max(0.5, 0.15 * (hi - lo))
    left, right = max(0.0, lo - pad), min(100.0, hi + pad)
    left = min(left, right - 1.0)
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.4))
    y = list(range(len(rows)))[::-1]  # the first variant on top
    for yi, r in zip(y, rows, strict=True):
        if r["acc"] is None:
            ax.text(left, yi, f"  {r['status'].split(':')[0]}", va="center", fontsize=8, color="r")
            continue
        value = 100 * r["acc"]
        ax.barh(yi, value - left, left=left, color=_colour(r["variant"]), height=0.7)
        gap = r["gap_to_baseline_pts"]
        label = f" {value:.2f}" + (f" ({gap:+.2f})" if gap is not None else "")
        ax.text(value, yi, label, va="center", fontsize=8)
    for name, style in (("baseline", "--"), ("fp32", ":")):
        if name in refs:
            ax.axvline(refs[name], color="k", linestyle=style, linewidth=1, label=name)
    if refs.keys() & {"baseline", "fp32"}:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_yticks(y, [r["variant"] for r in rows], fontsize=8)
    ax.set_xlim(left, right + (right - left) * 0.12)  # room for the labels
    splits = {r["eval_split"] for r in rows if r.get("eval_split")}
    ax.set_xlabel(f"{'/'.join(sorted(splits)) or 'eval'} accuracy (%)")
    ax.set_title("ablation: accuracy per variant (gap to baseline, points)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=120)
    finally:
        plt.close(fig)
    return out


def write_results(
    out: Path,
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    *,
    final: bool = True,
    plot: bool = False,
) -> None:
    """``out/ablation.json`` (the run config and the rows); when ``final`` also
    ``out/ablation.txt`` (the table) and, with ``plot``, ``out/ablation.png``. A failed write
    raises `TrainingIOError` (the variants' run directories are complete)."""
    from .loop import TrainingIOError

    doc = json.dumps({"config": config, "variants": rows}, indent=2) + "\n"
    files = [(out / "ablation.json", doc.encode())]
    if final:
        files.append((out / "ablation.txt", format_table(rows).encode()))
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path, data in files:
            atomic_write_bytes(path, data)
        if final and plot:
            plot_ablation(rows, out / "ablation.png")
    except OSError as exc:
        raise TrainingIOError(
            f"cannot write the ablation results in {out} ({exc.strerror or exc}); the variants' "
            "run directories are complete: fix the directory and run the ablation again (finished "
            "variants are read back)"
        ) from None
