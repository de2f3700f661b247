"""`torchrun --nproc_per_node=2 -m wageubn train`: 2 gloo processes on 127.0.0.1, bounded time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wageubn.train.checkpoint import load_checkpoint

TIMEOUT = 240
ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(
    tmp_path: Path, name: str, *overrides: str, nproc: int = 2
) -> subprocess.CompletedProcess:
    """Launch through torch's own launcher; killed with its process group on timeout."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1", f"--master_port={_port()}",
        "-m", "wageubn", "train", str(ROOT / "configs" / "mnist_cnn_paper.yaml"),
        "--train.out_dir", str(tmp_path), "--train.run_name", name, "--train.threads", "1",
        "--data.train_subset", "256", "--data.eval_subset", "200", "--data.batch_size", "32",
        "--train.max_steps", "6", "--train.checkpoint_every_steps", "3", "--no-progress",
        *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun timed out:\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


def _model_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "last.pt")["model"]


def test_two_process_training_is_reproducible_and_rank0_writes(tmp_path):
    a = torchrun(tmp_path, "a", "--diag.every", "3")
    assert a.returncode == 0, a.stdout[-3000:]
    b = torchrun(tmp_path, "b")
    assert b.returncode == 0, b.stdout[-3000:]
    ckpt = load_checkpoint(tmp_path / "a" / "last.pt")
    assert ckpt["step"] == 6 and ckpt["world_size"] == 2
    for k, v in _model_state(tmp_path / "a").items():  # same seed, same world: bit-identical
        assert torch.equal(v, _model_state(tmp_path / "b")[k]), k
    assert (tmp_path / "a" / "metrics.jsonl").is_file()
    assert (tmp_path / "a" / "diagnostics.jsonl").stat().st_size > 0
    assert not any(p.name.startswith("a-") for p in tmp_path.iterdir())  # one run dir, by rank 0
    # resume with the same world size ≡ an uninterrupted 2-process run
    c = torchrun(tmp_path, "a", "--resume", str(tmp_path / "a"), "--train.max_steps", "8")
    assert c.returncode == 0, c.stdout[-3000:]
    d = torchrun(tmp_path, "d", "--train.max_steps", "8")
    assert d.returncode == 0, d.stdout[-3000:]
    assert load_checkpoint(tmp_path / "a" / "last.pt")["step"] == 8
    for k, v in _model_state(tmp_path / "d").items():
        assert torch.equal(v, _model_state(tmp_path / "a")[k]), k


def test_resume_needs_the_same_world_size(tmp_path):
    a = torchrun(tmp_path, "w", nproc=2)
    assert a.returncode == 0, a.stdout[-3000:]
    single = subprocess.run(
        [sys.executable, "-m", "wageubn", "train", "--resume", str(tmp_path / "w"),
         "--train.max_steps", "8"],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path,
    )  # fmt: skip
    assert single.returncode == 2
    assert "written by 2 process(es), resumed with 1" in single.stderr
