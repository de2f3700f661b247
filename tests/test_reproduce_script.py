"""benchmarks/reproduce.py: a finished run is read back, not retrained; a run directory trained
with another recipe is refused, naming the difference; results land one file per section."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reproduce  # noqa: E402

TINY = ["--model.width", "4", "--data.train_subset", "64", "--data.eval_subset", "100",
        "--data.batch_size", "32", "--train.checkpoint_every_steps", "1"]  # fmt: skip


def test_reproduce_reads_back_and_refuses_another_recipe(tmp_path, monkeypatch):
    section = ("tiny MNIST", [("tiny-fp32", "mnist_cnn_fp32.yaml", TINY),
                              ("tiny-paper", "mnist_cnn_paper.yaml", TINY)])  # fmt: skip
    monkeypatch.setitem(reproduce.SECTIONS, "tiny", section)
    argv = ["--sections", "tiny", "--out", str(tmp_path / "runs"), "--threads", "1",
            "--results", str(tmp_path / "results"), "--presets", "fp32,paper"]  # fmt: skip
    assert reproduce.main(argv) == 0
    rows = json.loads((tmp_path / "results" / "reproduce_tiny.json").read_text())
    assert [(r["name"], r["steps"], r["reused"]) for r in rows] == [
        ("tiny-fp32", 2, False), ("tiny-paper", 2, False)]  # fmt: skip
    md = (tmp_path / "results" / "reproduce_tiny.md").read_text()
    assert "| paper |" in md and "--sections tiny" in md

    before = (tmp_path / "runs" / "tiny-paper" / "metrics.jsonl").read_text()
    assert reproduce.main(argv) == 0  # read back: nothing trained again
    again = json.loads((tmp_path / "results" / "reproduce_tiny.json").read_text())
    assert [r["reused"] for r in again] == [True, True]
    assert [r["acc"] for r in again] == [r["acc"] for r in rows]
    assert (tmp_path / "runs" / "tiny-paper" / "metrics.jsonl").read_text() == before

    other = ("tiny MNIST", [("tiny-paper", "mnist_cnn_paper.yaml", [*TINY, "--optim.lr", "0.125"])])
    monkeypatch.setitem(reproduce.SECTIONS, "tiny", other)
    with pytest.raises(SystemExit, match=r"another recipe \(optim.lr 0.25 there vs 0.125 now\)"):
        reproduce.main([*argv[:-2], "--presets", "paper"])
    assert (tmp_path / "runs" / "tiny-paper" / "metrics.jsonl").read_text() == before


def test_reproduce_seed_keeps_its_own_runs_and_results(tmp_path, monkeypatch):
    """``--seed N``: the runs train with that seed under OUT/seedN and the results carry _seedN."""
    section = ("tiny MNIST", [("tiny-paper", "mnist_cnn_paper.yaml", TINY)])
    monkeypatch.setitem(reproduce.SECTIONS, "tiny", section)
    argv = ["--sections", "tiny", "--out", str(tmp_path / "runs"), "--threads", "1",
            "--results", str(tmp_path / "results"), "--presets", "paper", "--seed", "3"]  # fmt: skip
    assert reproduce.main(argv) == 0
    rows = json.loads((tmp_path / "results" / "reproduce_tiny_seed3.json").read_text())
    assert rows[0]["run_dir"] == str(tmp_path / "runs" / "seed3" / "tiny-paper")
    assert "seed 3 for every run" in (tmp_path / "results" / "reproduce_tiny_seed3.md").read_text()
    assert "seed: 3" in (tmp_path / "runs" / "seed3" / "tiny-paper" / "config.yaml").read_text()
