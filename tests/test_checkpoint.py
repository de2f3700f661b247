"""Checkpoints: atomic writes, corrupt/truncated/mismatched files, SIGKILL mid-run + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from test_train import rows_without_timing, tiny  # the tiny-run config shared by both files
from wageubn.quant.fusion import fusion
from wageubn.train import CheckpointError, RunConfig, load_checkpoint, load_run_config, train
from wageubn.train.checkpoint import atomic_write_bytes, serialize_checkpoint
from wageubn.train.lifecycle import describe_status

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run's directory (last.pt, best.pt, metrics)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    return Path(train(tiny(tmp))["run_dir"])


def test_checkpoint_is_plain_and_complete(finished):
    """weights_only loading works; every piece of state needed for resume is there."""
    raw = torch.load(finished / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "batches", "rng", "epoch", "step", "run_config"):
        assert key in raw
    assert raw["optimizer"]["generator_state"].dtype == torch.uint8
    assert raw["rng"]["torch"].dtype == torch.uint8
    assert raw["step"] == 16 and raw["epoch"] == 2
    assert raw["batches"] == {"epoch": 2, "position": 0, "seed": raw["batches"]["seed"]}
    assert any("momentum_buffer" in s for s in raw["optimizer"]["state"].values())
    assert load_checkpoint(finished / "best.pt")["best_acc"] == raw["best_acc"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    """A write that fails before the rename leaves the old file and no temporary file."""
    target = tmp_path / "last.pt"
    atomic_write_bytes(target, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def _damage(kind: str, data: bytes) -> bytes:
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "empty":
        return b""
    if kind == "bitflip":  # inside the tensor data: the zip container stays readable
        b = bytearray(data)
        i = data.find(b"data/0") + 200
        b[i] ^= 0xFF
        return bytes(b)
    if kind == "foreign":
        import io

        buf = io.BytesIO()
        torch.save({"state_dict": {"w": torch.zeros(2)}}, buf)
        return buf.getvalue()
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "empty", "bitflip", "foreign"])
def test_damaged_checkpoint_is_one_line_error_and_nothing_is_overwritten(tmp_path, finished, kind):
    """Resuming from a damaged last.pt raises CheckpointError (one line); the run directory's
    files stay exactly as they were."""
    run = tmp_path / "run"
    run.mkdir()
    for f in finished.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    (run / "last.pt").write_bytes(_damage(kind, (finished / "last.pt").read_bytes()))
    before = {f.name: f.read_bytes() for f in run.iterdir()}
    with pytest.raises(CheckpointError) as info:
        train(tiny(tmp_path, train__epochs=3), resume=run)
    msg = str(info.value)
    assert "\n" not in msg and str(run / "last.pt") in msg
    expected = {
        "truncated": "corrupt",
        "empty": "corrupt",
        "bitflip": "checksum mismatch",
        "foreign": "not a wageubn checkpoint",
    }[kind]
    assert expected in msg
    assert {f.name: f.read_bytes() for f in run.iterdir()} == before


class _Code:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def _hostile(kind: str, good: bytes) -> bytes:
    """Files that make torch.load(weights_only=True) fail in its many ways."""
    import io
    import pickle
    import random
    import zipfile

    if kind == "random":
        return random.Random(0).randbytes(5000)
    if kind == "code":  # a pickle that would run os.system
        buf = io.BytesIO()
        torch.save({"model": _Code()}, buf)
        return buf.getvalue()
    if kind == "plain-pickle":  # pickle protocol 4: torch also warns about it
        return pickle.dumps({"model": {}}, protocol=4)
    if kind == "cut-pickle":  # a readable archive whose data.pkl is cut in half (struct.error)
        src, out = zipfile.ZipFile(io.BytesIO(good)), io.BytesIO()
        with zipfile.ZipFile(out, "w") as dst:
            for name in src.namelist():
                data = src.read(name)
                dst.writestr(name, data[: len(data) // 2] if name.endswith("data.pkl") else data)
        return out.getvalue()
    if kind == "flipped-pickle":  # bytes of data.pkl flipped in place (UnicodeDecodeError)
        b = bytearray(good)
        i = good.find(b"data.pkl")
        for k in range(200, 260):
            b[i + k] ^= 0x55
        return bytes(b)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["random", "code", "plain-pickle", "cut-pickle", "flipped-pickle"])
def test_hostile_checkpoint_shows_our_message_only(tmp_path, finished, kind, capsys):
    """Whatever torch.load raises or warns, the user sees one line of ours: no traceback, no torch
    warning, no advice to disable weights_only or to file an issue; code in a pickle never runs."""
    import warnings

    from wageubn import cli

    bad = tmp_path / "bad.pt"
    bad.write_bytes(_hostile(kind, (finished / "last.pt").read_bytes()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning torch lets through fails the test
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(bad)
    msg = str(info.value)
    assert msg.startswith(f"{bad}: ") and "\n" not in msg
    assert ("refers to Python code (posix.system)" if kind == "code" else "corrupt") in msg
    for leak in ("weights_only", "file an issue", "Please", "http", "PyTorch"):
        assert leak not in msg, leak
    assert cli.main(["eval", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert "owned" not in out and err.count("\n") == 1 and "weights_only" not in err


def test_checkpoint_that_does_not_fit_the_model(tmp_path, finished):
    """A well-formed checkpoint whose weights do not fit the model it names is refused."""
    ckpt = load_checkpoint(finished / "last.pt")
    ckpt["run_config"]["model"]["width"] = 8
    payload = {k: v for k, v in ckpt.items() if k not in ("format", "version", "checksum")}
    bad = tmp_path / "bad.pt"
    bad.write_bytes(serialize_checkpoint(payload))
    cfg = RunConfig.from_dict(ckpt["run_config"])
    with pytest.raises(CheckpointError, match="does not fit this run"):
        train(cfg, resume=bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="has no last.pt"):
        load_checkpoint(tmp_path)


def test_sigkill_mid_epoch_then_resume(tmp_path):
    """A `wageubn train` process killed with SIGKILL after a mid-epoch checkpoint loses only the
    steps since it; resuming finishes the run bit-identical to an uninterrupted one."""
    over = {
        "model.width": 4,
        "data.train_subset": 2048,
        "train.epochs": 2,
        "train.checkpoint_every_steps": 2,
        "train.log_every": 4,
    }
    cfg = tiny(tmp_path, "killed", **{k.replace(".", "__"): v for k, v in over.items()})
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wageubn", "train", str(path), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        time.sleep(0.2)  # let it get some steps past the checkpoint
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    saved = load_checkpoint(run / "last.pt")
    steps_total = 2 * 2048 // 32
    assert 0 < saved["step"] < steps_total, "the run finished before it could be killed"
    info = json.loads((run / "run.json").read_text())  # SIGKILL leaves "running" behind...
    gone = f"ended without a final status: process {proc.pid} on {info['owner']['host']} is gone"
    assert info["status"] == "running" and describe_status(info)[0].startswith(gone)  # ...seen
    # The killed process ran the kernels' eager code (conftest: child processes do); float sums
    # compiled in another order may differ in a last bit, so compare runs of one fusion mode.
    with fusion(False):
        resumed = train(load_run_config(path), resume=run)
        straight = train(load_run_config(path, {"train.run_name": "straight"}))
    assert resumed["step"] == steps_total and resumed["status"] == "completed"
    assert json.loads((run / "run.json").read_text())["resumes"][0]["previous_status"].startswith(
        gone
    )
    a, b = load_checkpoint(straight["last_checkpoint"]), load_checkpoint(resumed["last_checkpoint"])
    for key in ("model", "optimizer"):
        sa, sb = a[key], b[key]
        if key == "optimizer":
            sa, sb = sa["state"], sb["state"]
            assert torch.equal(a[key]["generator_state"], b[key]["generator_state"])
        for k in sa:
            for x, y in zip(_tensors(sa[k]), _tensors(sb[k]), strict=True):
                assert torch.equal(x, y), (key, k)
    assert rows_without_timing(run) == rows_without_timing(straight["run_dir"])


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj) for t in _tensors(obj[k])]
    return []
