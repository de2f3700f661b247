"""`wageubn plot`: log loss axis, train and eval accuracy, epochs counted from 0, no empty panel.

The runs are metrics files written here (no training): 10 steps an epoch, a train row every 5."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from wageubn import cli
from wageubn.train.plots import figure_runs, plot_runs, steps_per_epoch

pytest.importorskip("matplotlib", reason="the [plot] extra is not installed")


def _run(path: Path, *, epochs: int, steps: int | None = None, run_json: bool = True,
         evals: bool = True, acc: bool = True) -> Path:  # fmt: skip
    """A run directory of ``epochs`` epochs of 10 steps (or ``steps`` steps, stopped early)."""
    path.mkdir(parents=True)
    rows = []
    last = steps if steps is not None else 10 * epochs
    for step in range(5, last + 1, 5):
        epoch = (step - 1) // 10
        rows.append({"kind": "train", "epoch": epoch, "step": step, "loss": 2.0 / step,
                     "acc": 0.5 + step / 100 if acc else None})  # fmt: skip
        if step % 10 == 0:
            rows.append({"kind": "epoch", "epoch": epoch, "step": step, "loss": 1.0, "acc": 0.8})
            if evals:
                rows.append({"kind": "eval", "epoch": epoch, "step": step, "loss": 0.5 / step,
                             "acc": 0.9, "eval_split": "test"})  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if run_json:
        (path / "run.json").write_text(json.dumps({"steps_per_epoch": 10}))
    return path


def _lines(ax):
    return [line for line in ax.get_lines() if len(line.get_xdata())]


def test_two_runs_log_loss_train_and_eval_accuracy_epochs_from_zero(tmp_path):
    full = _run(tmp_path / "full", epochs=2)
    short = _run(tmp_path / "short", epochs=1, steps=7, evals=False)  # interrupted, no eval
    fig = figure_runs([full, short])
    ax_loss, ax_acc = fig.axes
    assert ax_loss.get_yscale() == "log" and ax_acc.get_yscale() == "linear"
    labels = [t.get_text() for t in ax_loss.get_xticklabels(minor=True)]
    assert labels == ["0", "1"]  # epochs as the logs count them, labelled in their middle
    assert [t.get_position()[0] for t in ax_loss.get_xticklabels(minor=True)] == [0.5, 1.5]
    acc_lines = _lines(ax_acc)
    # full: train accuracy + eval accuracy; short: train accuracy only
    assert len(acc_lines) == 3
    eval_line = next(line for line in acc_lines if line.get_marker() == "o")
    assert list(eval_line.get_xdata()) == [1.0, 2.0]  # the end of epochs 0 and 1
    assert list(eval_line.get_ydata()) == [90.0, 90.0]
    train_full = acc_lines[0]
    assert list(train_full.get_xdata()) == [0.5, 1.0, 1.5, 2.0]
    legend = [t.get_text() for t in ax_acc.get_legend().get_texts()]
    assert legend[:2] == ["full", "short"] and "eval (end of epoch or run)" in legend
    assert ax_loss.get_xlim()[1] == pytest.approx(2.03)


def test_no_empty_accuracy_panel(tmp_path):
    """A run with neither train accuracy nor evaluations gets the loss panel only."""
    run = _run(tmp_path / "r", epochs=1, evals=False, acc=False)
    fig = figure_runs([run])
    assert len(fig.axes) == 1 and fig.axes[0].get_yscale() == "log"
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "eval (end of epoch or run)" not in legend


def test_step_axis_and_steps_per_epoch(tmp_path, caplog):
    full = _run(tmp_path / "full", epochs=2, run_json=False)
    assert steps_per_epoch(full) == 10  # from its first epoch row
    old = _run(tmp_path / "old", epochs=1, steps=7, run_json=False)  # no epoch row, no run.json
    assert steps_per_epoch(old) is None
    with caplog.at_level(logging.WARNING, logger="wageubn.train.plots"):
        fig = figure_runs([full, old])
    assert "plotting against steps" in caplog.text
    assert fig.axes[0].get_xlabel() == "optimizer step"
    fig = figure_runs([full], x="step")
    assert max(_lines(fig.axes[0])[0].get_xdata()) == 20
    out = plot_runs([full], tmp_path / "sub" / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    code = cli.main(["plot", str(empty), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no train or eval rows" in err
    with pytest.raises(ValueError, match="x must be"):
        figure_runs([empty], x="time")
