"""A run's life: SIGTERM/SIGINT stop with a checkpoint, run.json never claims "running" for a dead
process, and a run stopped by max_steps evaluates and resumes (train/lifecycle.py, train/loop.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import _same_state, rows_without_timing, tiny
from wageubn import cli
from wageubn.train import (
    CheckpointError,
    RunConfigError,
    load_checkpoint,
    train,
)
from wageubn.train import loop as loop_module
from wageubn.train.lifecycle import _proc_stat, describe_status, owner_record
from wageubn.train.metrics import read_metrics


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    """The uninterrupted tiny run (16 steps, 2 epochs of 8)."""
    return train(tiny(tmp_path_factory.mktemp("straight"), "straight"))


def _at_step(monkeypatch, step: int, action) -> None:
    """Call ``action()`` right after optimizer step ``step``."""
    real = loop_module._Run._step

    def step_then(self, x, y, epoch):
        out = real(self, x, y, epoch)
        if self.step == step:
            action()
        return out

    monkeypatch.setattr(loop_module._Run, "_step", step_then)


def _cli_run(tmp_path: Path, name: str, *over: str) -> list[str]:
    cfg = tiny(tmp_path, name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(cfg.to_dict()))  # JSON is YAML
    return ["train", str(path), "--no-progress", *over]


def _status(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["status"]


# -- signals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sig, step, twice",
    [(signal.SIGTERM, 5, False), (signal.SIGTERM, 8, False), (signal.SIGINT, 5, False),
     (signal.SIGTERM, 5, True)],
    ids=["sigterm-mid-epoch", "sigterm-last-step-of-epoch", "sigint", "sigterm-twice"],
)  # fmt: skip
def test_signal_checkpoints_marks_interrupted_and_resumes(
    tmp_path, monkeypatch, capsys, straight, sig, step, twice
):
    """SIGTERM (as schedulers and `kill` send it) is handled like SIGINT: the step finishes,
    last.pt is written (after the epoch's evaluation when it is the epoch's last step), run.json
    says interrupted, exit status 128 + signal; the resumed run equals an uninterrupted one. A
    second signal stops at once, keeping the last periodic checkpoint."""

    def send():
        os.kill(os.getpid(), sig)
        if twice:
            os.kill(os.getpid(), sig)

    _at_step(monkeypatch, step, send)
    code = cli.main(_cli_run(tmp_path, "run"))
    err = capsys.readouterr().err.strip().splitlines()
    run = tmp_path / "run"
    saved = 3 if twice else step  # checkpoint_every_steps=3
    assert code == 128 + sig
    assert err[-1].startswith(f"wageubn: interrupted by {'a second ' if twice else ''}{sig.name}")
    assert f"last.pt (step {saved})" in err[-1] and f"--resume {run}" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert load_checkpoint(run / "last.pt")["step"] == saved
    assert _status(run).startswith("interrupted by") and sig.name in _status(run)
    if step == 8:  # the epoch's evaluation happened before the stop
        assert [r["step"] for r in read_metrics(run) if r["kind"] == "eval"] == [8]
    monkeypatch.undo()
    resumed = train(tiny(tmp_path, "run"), resume=run)
    assert resumed["step"] == 16 and resumed["status"] == "completed"
    _same_state(load_checkpoint(straight["last_checkpoint"]), load_checkpoint(run / "last.pt"))
    assert rows_without_timing(straight["run_dir"]) == rows_without_timing(run)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_library_train_leaves_signals_alone(tmp_path, monkeypatch):
    """Only the CLI (handle_signals=True) installs handlers; train() from Python does not."""
    seen = []
    _at_step(monkeypatch, 1, lambda: seen.append(signal.getsignal(signal.SIGTERM)))
    train(tiny(tmp_path, train__max_steps=1))
    assert seen == [signal.SIG_DFL]


# -- run.json after a crash or a kill ---------------------------------------------------------


def test_crash_is_recorded_not_left_running(tmp_path, monkeypatch):
    """An unexpected exception (a bug) propagates, and run.json says crashed, naming it."""

    def boom():
        raise RuntimeError("boom")

    _at_step(monkeypatch, 5, boom)
    with pytest.raises(RuntimeError, match="boom"):
        train(tiny(tmp_path))
    assert _status(tmp_path / "run") == "crashed at step 5: RuntimeError: boom"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_running_status_of_a_dead_process_is_reported_and_resume_goes_on(tmp_path, capsys):
    """run.json left at "running" by a killed process: eval reports that the process is gone,
    resume records it and continues."""
    first = train(tiny(tmp_path, train__max_steps=4))
    run = Path(first["run_dir"])
    info = json.loads((run / "run.json").read_text())
    info["status"] = "running"
    info["owner"] = {**owner_record(), "pid": _dead_pid()}
    (run / "run.json").write_text(json.dumps(info))
    gone = f"ended without a final status: process {info['owner']['pid']}"
    assert describe_status(info)[0].startswith(gone)
    assert cli.main(["eval", str(run), "--batch-size", "1000"]) == 0  # evaluate_checkpoint
    assert f"run status: {gone}" in capsys.readouterr().out
    resumed = train(tiny(tmp_path, train__max_steps=6), resume=run)
    assert resumed["step"] == 6 and resumed["status"] == "stopped at max_steps=6"
    info = json.loads((run / "run.json").read_text())
    assert info["resumes"][-1]["previous_status"].startswith(gone)
    assert info["status"] == "stopped at max_steps=6"


def test_resume_refuses_a_run_whose_process_is_alive(tmp_path, capsys):
    """A run whose recorded owner still runs is not resumed a second time (both would write the
    same files): one line naming the process, exit 2, nothing changed."""
    first = train(tiny(tmp_path, train__max_steps=4))
    run = Path(first["run_dir"])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = json.loads((run / "run.json").read_text())
        info["status"] = "running"
        info["owner"] = {**owner_record(), "pid": live.pid, "start": _proc_stat(live.pid)[1]}
        (run / "run.json").write_text(json.dumps(info))
        assert describe_status(info) == (
            f"running (process {live.pid} on {owner_record()['host']})",
            True,
        )
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        with pytest.raises(CheckpointError, match=f"running .process {live.pid}"):
            train(tiny(tmp_path, train__max_steps=6), resume=run)
        assert cli.main(["train", "--resume", str(run), "--train.max_steps", "6"]) == 2
        assert f"running (process {live.pid}" in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    finally:
        live.kill()
        live.wait()


# -- max_steps ----------------------------------------------------------------------------------


def test_max_steps_stop_evaluates_and_resume_needs_more_steps(tmp_path, capsys):
    """A run stopped by max_steps mid-epoch evaluates and writes best.pt; resuming it with nothing
    left to do is a one-line error with both fixes; a larger max_steps or max_steps null goes on.
    A stop at an epoch's end is "stopped", not "completed", when epochs are left."""
    first = train(tiny(tmp_path, train__max_steps=4))
    run = Path(first["run_dir"])
    assert first["status"] == "stopped at max_steps=4" and first["eval"]["images"] == 200
    assert load_checkpoint(run / "best.pt")["step"] == 4
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "eval"] == [4]
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(
        RunConfigError, match=r"--train.max_steps N with N > 4, or --train.max_steps null"
    ):
        train(tiny(tmp_path, train__max_steps=4), resume=run)
    assert cli.main(["train", "--resume", str(run)]) == 2
    assert "12 steps of train.epochs=2 left" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    at_epoch_end = train(tiny(tmp_path, train__max_steps=8), resume=run)
    assert at_epoch_end["step"] == 8 and at_epoch_end["status"] == "stopped at max_steps=8"
    done = train(tiny(tmp_path, train__max_steps=None), resume=run)
    assert done["step"] == 16 and done["status"] == "completed"
