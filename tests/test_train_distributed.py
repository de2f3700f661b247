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
# the processes import this checkout's package, whatever else is installed
SRC = os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])


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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC}
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
    # rank 0 speaks for the run: one header, one final line (each rank printed its own before)
    assert a.stdout.count(f"run {tmp_path / 'a'}: small_cnn") == 1, a.stdout[-3000:]
    assert a.stdout.count("stopped at max_steps=6 after 6 steps") == 1, a.stdout[-3000:]
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
        env={**os.environ, "PYTHONPATH": SRC},
    )  # fmt: skip
    assert single.returncode == 2
    assert "written by 2 process(es), resumed with 1" in single.stderr


def test_torchrun_batch_that_three_processes_do_not_divide(tmp_path):
    """torchrun --nproc_per_node=3 with a global batch of 32: the reason is printed once, by rank
    0, and no worker prints a traceback (each did before)."""
    r = torchrun(tmp_path, "odd", nproc=3)
    assert r.returncode != 0
    assert r.stdout.count("wageubn: error: data.batch_size 32") == 1, r.stdout[-3000:]
    assert "[rank" not in r.stdout, r.stdout[-3000:]  # torchrun prefixes worker tracebacks
    assert not (tmp_path / "odd").exists()


@pytest.mark.parametrize("rank", ["0", "1", "2"])
def test_batch_that_the_world_size_does_not_divide(tmp_path, capsys, monkeypatch, rank):
    """torchrun --nproc_per_node=3 with a global batch of 32: every rank stops before joining the
    process group (exit 2, no traceback) and only rank 0 says why, once."""
    from wageubn import cli

    for key, value in {"WORLD_SIZE": "3", "RANK": rank, "LOCAL_RANK": rank}.items():
        monkeypatch.setenv(key, value)
    argv = ["train", str(ROOT / "configs" / "mnist_cnn_paper.yaml"), "--data.batch_size", "32"]
    assert cli.main([*argv, "--train.out_dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    if rank == "0":
        assert err.count("\n") == 1 and err.startswith("wageubn: error: data.batch_size 32")
        assert "over 3 processes" in err and "--data.batch_size 30 or 33" in err
    else:
        assert err == ""
    assert out == "" and list(tmp_path.iterdir()) == []


def test_init_process_group_gets_dist_timeout(monkeypatch):
    """dist.timeout (default 600 s) bounds every collective: it is passed to
    init_process_group, so a rank that stops answering ends the run instead of hanging it."""
    from datetime import timedelta

    import torch.distributed as dist

    from wageubn.train import load_run_config, parallel

    seen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.append(kw))
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    parallel.setup(load_run_config(None))
    parallel.setup(load_run_config(None, {"dist.timeout": 5}))
    assert seen == [{"timeout": timedelta(seconds=600)}, {"timeout": timedelta(seconds=5)}]


_STOPPED_RANK = """
import os, signal, sys
from wageubn import cli
from wageubn.train import loop
real = loop._Run._step
def step(self, x, y, epoch):  # rank 1 stops answering (SIGSTOP) in its step 2
    if self.ctx.rank == 1 and self.step == 2:
        os.kill(os.getpid(), signal.SIGSTOP)
    return real(self, x, y, epoch)
loop._Run._step = step
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_rank_that_stops_answering_ends_the_run_after_dist_timeout(tmp_path):
    """Rank 1 is SIGSTOPped mid-run: rank 0 gives up after dist.timeout (3 s) with one line
    naming the setting and the last good checkpoint, exit 1, run.json says failed."""
    import json
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_port()), "PYTHONPATH": SRC}  # fmt: skip
    argv = [sys.executable, "-c", _STOPPED_RANK, "train", str(ROOT / "configs" / "mnist_cnn_paper.yaml"),
            "--train.out_dir", str(tmp_path), "--train.run_name", "stop", "--train.threads", "1",
            "--data.train_subset", "128", "--data.batch_size", "32", "--train.checkpoint_every_steps",
            "1", "--dist.timeout", "3", "--no-progress"]  # fmt: skip
    procs = [
        subprocess.Popen(argv, env={**env, "RANK": r, "LOCAL_RANK": r}, stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True)
        for r in ("0", "1")
    ]  # fmt: skip
    try:
        start = time.monotonic()
        _, err = procs[0].communicate(timeout=TIMEOUT)
        waited = time.monotonic() - start
    finally:
        for p in procs:
            p.kill()
            p.wait()
        procs[1].stderr.close()
    lines = [ln for ln in err.splitlines() if ln.startswith("wageubn")]
    assert procs[0].returncode == 1 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and "epoch 0 step 2" in lines[0], err[-3000:]
    assert "another process did not answer within dist.timeout=3 s" in lines[0]
    assert f"last good checkpoint: {tmp_path / 'stop' / 'last.pt'} (step 1)" in lines[0]
    assert json.loads((tmp_path / "stop" / "run.json").read_text())["status"].startswith("failed")
    assert waited < TIMEOUT
