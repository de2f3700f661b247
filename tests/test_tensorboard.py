"""TensorBoard: a short run with train.tensorboard writes event files whose scalars equal
metrics.jsonl, and with diag.every also per-role diagnostics scalars and code histograms."""

from __future__ import annotations

import pytest

from wageubn.diagnostics import load_rows
from wageubn.train import load_run_config, train
from wageubn.train.metrics import read_metrics, role_rates

pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)


def _events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}
    )
    acc.Reload()
    return acc


def test_tensorboard_scalars_diagnostics_and_code_histograms(tmp_path):
    cfg = load_run_config(
        None,
        {
            "model.width": 4,
            "data.batch_size": 32,
            "data.train_subset": 192,
            "data.eval_subset": 100,
            "optim.lr": 0.125,
            "train.epochs": 1,
            "train.log_every": 2,
            "train.threads": 1,
            "train.out_dir": str(tmp_path),
            "train.run_name": "tb",
            "train.tensorboard": True,
            "diag.every": 3,
        },
    )
    run_dir = tmp_path / "tb"
    train(cfg)
    events = _events(run_dir)
    tags = events.Tags()
    rows = read_metrics(run_dir)
    for kind in ("train", "epoch", "eval"):
        for key in ("loss", "acc"):
            want = [(r["step"], r[key]) for r in rows if r["kind"] == kind]
            got = [(e.step, e.value) for e in events.Scalars(f"{kind}/{key}")]
            assert want and got == [(s, pytest.approx(v, rel=1e-6)) for s, v in want]
    diag = load_rows(run_dir)
    steps = sorted({r["step"] for r in diag})
    assert steps == [3, 6]
    for role in ("W", "E2", "G", "bn_xhat", "G(bn_gamma)"):
        for metric in ("saturation", "underflow"):
            got = [(e.step, e.value) for e in events.Scalars(f"{metric} %/{role}")]
            want = [(s, 100 * role_rates([r for r in diag if r["step"] == s])[role][metric])
                    for s in steps]  # fmt: skip
            assert got == [(s, pytest.approx(v, rel=1e-5, abs=1e-9)) for s, v in want]
    assert "unchanged %/U" in tags["scalars"] and "saturation %/U" not in tags["scalars"]
    assert any(e.value > 0 for e in events.Scalars("underflow %/E2"))
    for role in ("W", "A", "E1", "E2", "G", "U", "momentum", "bn_mean", "U(bn_beta)"):
        hists = events.Histograms(f"codes/{role}")
        assert [h.step for h in hists] == steps
        for h in hists:  # every element of the role in the model is counted once
            numel = sum(r["numel"] for r in diag if r["step"] == h.step and r["role"] == role)
            value = h.histogram_value
            assert value.num == numel == sum(value.bucket)
    w = events.Histograms("codes/W")[0].histogram_value  # 8-bit QC: codes −127…127, one bucket each
    assert len(w.bucket) == 255 and w.bucket_limit[0] == -126.5 and -127 <= w.min <= w.max <= 127


def test_role_rates_weight_by_elements():
    rows = [
        {"role": "E2", "numel": 100, "saturation": 0.5, "underflow": 0.0},
        {"role": "E2", "numel": 300, "saturation": 0.0, "underflow": 0.2},
        {"role": "U", "numel": 10, "saturation": 0.0, "unchanged": 0.9},
    ]
    assert role_rates(rows) == {
        "E2": {"saturation": 0.125, "underflow": pytest.approx(0.15)},
        "U": {"unchanged": 0.9},
    }
