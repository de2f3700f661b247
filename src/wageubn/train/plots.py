"""``plot_runs(runs, out)``: training curves of one or more runs in one PNG.

Two panels: training loss (the ``train`` rows, per step) and eval accuracy (the ``eval`` rows,
per epoch, or per step with ``x="step"``); one line per run, named by its directory in the legend.
matplotlib (the ``plot`` extra) is imported only here, with the Agg backend.
"""

from __future__ import annotations

from pathlib import Path

from ..extras import require
from .metrics import read_metrics

__all__ = ["plot_runs"]


def plot_runs(runs: list[str | Path], out: str | Path, *, x: str = "epoch") -> Path:
    """Write the curves of ``runs`` (run directories) to ``out``; returns its path.

    Raises ``FileNotFoundError`` for a directory without metrics.jsonl, ``ValueError`` for a bad
    ``x`` (``"epoch"`` or ``"step"``), ``MissingExtraError`` (an ImportError naming the ``plot``
    extra) when matplotlib is missing.
    """
    if x not in ("epoch", "step"):
        raise ValueError(f"plot_runs: x must be 'epoch' or 'step', got {x!r}")
    matplotlib = require("matplotlib", "plot", "plot_runs (wageubn plot)")
    data = []
    for run in runs:
        run = Path(run)
        if not (run / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"{run}: no metrics.jsonl (is it a run directory?)")
        data.append((run.name, read_metrics(run)))
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in data:
        train = [r for r in rows if r.get("kind") == "train" and _num(r.get("loss"))]
        ev = [r for r in rows if r.get("kind") == "eval" and _num(r.get("acc"))]
        if train:
            ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=name)
        if ev:
            xs = [r["epoch"] + 1 if x == "epoch" else r["step"] for r in ev]
            ax_acc.plot(xs, [100 * r["acc"] for r in ev], marker="o", label=name)
    ax_loss.set(xlabel="step", ylabel="training loss", title="training loss")
    ax_acc.set(xlabel=x, ylabel="accuracy (%)", title="eval accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _num(value: object) -> bool:
    return isinstance(value, int | float)
