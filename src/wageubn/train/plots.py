"""``plot_runs(runs, out)``: training curves of one or more runs in one PNG.

Two panels sharing the x axis, one colour per run (named by its directory):

* loss, on a log axis (the first window's spike does not flatten the rest): the training loss of
  each ``log_every`` window (line) and the eval loss after each epoch and at a ``max_steps``
  stop (markers);
* accuracy (%): the training accuracy of each window (thin line) and the eval accuracy (markers);
  a run without evaluations shows its training accuracy only, and the panel is left out when no
  run has any accuracy at all.

``x="epoch"`` (default) places a row at ``step / steps_per_epoch``: epoch ``e`` spans ``[e, e+1)``
and is labelled ``e`` in its middle, counted from 0 as in the logs and metrics; an evaluation sits
at its step (the end of epoch ``e`` is its right edge; a ``max_steps`` stop may fall inside an
epoch). ``x="step"`` plots against optimizer steps.
matplotlib (the ``plot`` extra) is imported only here, with the Agg backend.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ..extras import require
from .lifecycle import read_run_info
from .metrics import read_metrics

__all__ = ["figure_runs", "plot_runs", "steps_per_epoch"]

log = logging.getLogger(__name__)


def steps_per_epoch(run: str | Path, rows: list[dict[str, Any]] | None = None) -> int | None:
    """Optimizer steps in one epoch of ``run``: from run.json, else from its first ``epoch`` row,
    else None (an old run stopped before its first epoch ended)."""
    info = read_run_info(Path(run) / "run.json")  # None when absent or unreadable
    spe = info.get("steps_per_epoch") if info is not None else None
    if isinstance(spe, int) and spe > 0:
        return spe
    rows = read_metrics(run) if rows is None else rows
    first = next((r for r in rows if r.get("kind") == "epoch"), None)
    if first is not None and first["step"] > 0:
        return first["step"] // (first["epoch"] + 1)
    return None


def figure_runs(runs: list[str | Path], *, x: str = "epoch") -> Any:
    """The matplotlib figure of ``plot_runs`` (not saved). Raises like `plot_runs`."""
    if x not in ("epoch", "step"):
        raise ValueError(f"plot_runs: x must be 'epoch' or 'step', got {x!r}")
    matplotlib = require("matplotlib", "plot", "plot_runs (wageubn plot)")
    data = []
    for run in runs:
        run = Path(run)
        if not (run / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"{run}: no metrics.jsonl (is it a run directory?)")
        rows = read_metrics(run)
        data.append((run.name, rows, steps_per_epoch(run, rows)))
    if not any(r.get("kind") in ("train", "eval") for _, rows, _ in data for r in rows):
        raise ValueError(
            f"plot_runs: no train or eval rows in {', '.join(str(r) for r in runs)} yet "
            "(a train row is written every train.log_every steps)"
        )
    if x == "epoch" and any(spe is None for *_, spe in data):
        missing = [name for name, _, spe in data if spe is None]
        log.warning("steps per epoch unknown for %s: plotting against steps", ", ".join(missing))
        x = "step"

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    has_acc = any(
        _num(r.get("acc")) for _, rows, _ in data for r in rows if r["kind"] in ("train", "eval")
    )
    fig, axes = plt.subplots(
        1, 2 if has_acc else 1, figsize=(11 if has_acc else 6, 4.2), squeeze=False, sharex=True
    )
    ax_loss = axes[0][0]
    ax_acc = axes[0][1] if has_acc else None
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    right = 0.0  # the largest x plotted
    for i, (_, rows, spe) in enumerate(data):
        color = colors[i % len(colors)]

        def pos(r: dict[str, Any], spe: int | None = spe) -> float:
            return r["step"] / spe if x == "epoch" else r["step"]

        train = [r for r in rows if r.get("kind") == "train"]
        ev = [r for r in rows if r.get("kind") == "eval"]
        for ax, key, scale in ((ax_loss, "loss", 1.0), (ax_acc, "acc", 100.0)):
            if ax is None:
                continue
            tr = [r for r in train if _num(r.get(key))]
            right = max([right] + [pos(r) for r in tr + ev])
            if tr:
                ax.plot([pos(r) for r in tr], [scale * r[key] for r in tr], color=color,
                        lw=1.0 if key == "acc" else 1.4, alpha=0.7 if key == "acc" else 1.0)  # fmt: skip
            er = [r for r in ev if _num(r.get(key))]
            if er:
                ax.plot([pos(r) for r in er], [scale * r[key] for r in er], color=color,
                        marker="o", ms=6, lw=2.0, ls="--" if key == "loss" else "-")  # fmt: skip
    ax_loss.set_yscale("log")
    _readable_log_ticks(ax_loss)
    ax_loss.set(ylabel="cross-entropy loss (log scale)", title="loss")
    if ax_acc is not None:
        ax_acc.set(ylabel="accuracy (%)", title="accuracy")
    for ax in (a for a in (ax_loss, ax_acc) if a is not None):
        ax.grid(alpha=0.3, which="major")
        if x == "epoch":
            _epoch_axis(ax, right)
        else:
            ax.set_xlabel("optimizer step")
    handles = [Line2D([], [], color=colors[i % len(colors)], lw=3, label=name)
               for i, (name, _, _) in enumerate(data)]  # fmt: skip
    if any(r.get("kind") == "train" for _, rows, _ in data for r in rows):
        handles.append(Line2D([], [], color="0.3", lw=1.2, label="train (mean of each log window)"))
    if any(r.get("kind") == "eval" for _, rows, _ in data for r in rows):
        label = "eval (end of epoch or run)"
        handles.append(Line2D([], [], color="0.3", lw=2, marker="o", label=label))
    (ax_acc or ax_loss).legend(handles=handles, fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_runs(runs: list[str | Path], out: str | Path, *, x: str = "epoch") -> Path:
    """Write the curves of ``runs`` (run directories) to ``out``; returns its path.

    Raises ``FileNotFoundError`` for a directory without metrics.jsonl, ``ValueError`` for a bad
    ``x`` (``"epoch"`` or ``"step"``) or runs without any row yet, ``MissingExtraError`` (an
    ImportError naming the ``plot`` extra) when matplotlib is missing.
    """
    fig = figure_runs(runs, x=x)  # checks for matplotlib first
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _epoch_axis(ax: Any, right: float) -> None:
    """x from 0 to the end of the last epoch reached; gridlines at epoch boundaries, each epoch
    labelled (from 0) in its middle."""
    from matplotlib.ticker import FixedLocator, MultipleLocator, NullFormatter

    epochs = max(1, math.ceil(right - 1e-9))
    ax.set_xlim(-0.01 * epochs, 1.015 * epochs)  # room for the markers on the edges
    stride = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 10**9) if epochs / s <= 12)
    ax.xaxis.set_major_locator(MultipleLocator(stride))
    ax.xaxis.set_major_formatter(NullFormatter())
    centers = [e + 0.5 for e in range(0, epochs, stride)]
    ax.xaxis.set_minor_locator(FixedLocator(centers))
    ax.set_xticks(centers, [str(e) for e in range(0, epochs, stride)], minor=True)
    ax.tick_params(axis="x", which="minor", length=0)
    ax.set_xlabel("epoch (counted from 0, as in the logs)")


def _readable_log_ticks(ax: Any) -> None:
    """Plain numbers (0.2, 0.5, 1, 2) on a log axis instead of powers of ten alone."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _num(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
