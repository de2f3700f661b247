"""Diagnostics: statistics right on hand-made tensors, recording on the right steps, inspect."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from wageubn import QSGD, quantize_
from wageubn.diagnostics import Diagnostics, load_rows, quantizer_stats, summarize
from wageubn.diagnostics import inspect as inspect_cmd
from wageubn.diagnostics.stats import code_histogram
from wageubn.models import create_model
from wageubn.nn.observe import tap
from wageubn.quant import (
    clipped_direct_quantize,
    constant_quantize,
    direct_quantize,
    flag_quantize,
    shift_quantize,
)


def test_clipped_saturation_and_underflow_counts():
    # 8 bits: range ±127/128, step 1/128. Two values clip, three non-zero values round to zero.
    x = torch.tensor([2.0, -1.5, 0.5, 0.001, -0.003, 0.0039, 0.0, 0.25])
    s = quantizer_stats("W", x, clipped_direct_quantize(x, 8), "QC", 8)
    assert s["saturation"] == 2 / 8
    assert s["underflow"] == 3 / 7  # of the 7 non-zero inputs
    assert s["distinct"] == 5  # 127/128, −127/128, 0.5, 0, 0.25
    assert s["exponent"] == 1  # R(x) = 2^round(log2 2) = 2


def test_shift_and_flag_saturation():
    x = torch.tensor([1.4, 0.3, -0.7, 1e-5])  # R = 1: 1.4 clips at 1; 1e-5 underflows
    s = quantizer_stats("E1", x, shift_quantize(x, 8), "SQ", 8)
    assert s["saturation"] == 1 / 4 and s["underflow"] == 1 / 4
    # R = 1, s = 1/128: coarse codes 1.4·128 = 179 and 1.0·128 = 128 both clip at 127
    y = torch.tensor([1.4, 1.0, 0.001, -0.5])
    s = quantizer_stats("E2", y, flag_quantize(y, 8), "FQ", 8)
    assert s["saturation"] == 2 / 4 and s["underflow"] == 0.0
    assert s["distinct"] == 3


def test_constant_saturation_and_direct_over_range():
    g = torch.tensor([1.3, 0.5, -0.2, 0.0])  # dr=8: 8·1.3 = 10.4 > 7 clips; 8·0.5 = 4 fits
    out = constant_quantize(g, 8, 8, generator=torch.Generator().manual_seed(0))
    s = quantizer_stats("G", g, out, "CQ", 8, dr=8)
    assert s["saturation"] == 1 / 4
    a = torch.tensor([0.5, 1.5, 3.0, 0.0])  # Q at 8 bits is unbounded: two codes exceed ±127
    s = quantizer_stats("A", a, direct_quantize(a, 8), "Q", 8)
    assert s["saturation"] == 0.0 and s["over_range"] == 2 / 4


def test_update_unchanged_fraction():
    before = torch.tensor([0.5, 0.25, 0.125, 0.0])
    after = torch.tensor([0.5, 0.2, 0.125, 0.0])
    s = quantizer_stats("U", before, after, "Q", 24)
    assert s["unchanged"] == 3 / 4


def _train(tmp_path, every, steps=4):
    torch.manual_seed(0)
    model = quantize_(create_model("small_cnn", width=4), "paper")
    opt = QSGD(
        model.parameters(), lr=0.05, config="paper", generator=torch.Generator().manual_seed(0)
    )
    diag = Diagnostics(model, every=every, path=tmp_path / "diagnostics.jsonl")
    for step in range(steps):
        with diag.step(step) as recording:
            assert recording == (step % every == 0)
            x, y = torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model


def test_recorder_writes_every_role_on_recorded_steps_only(tmp_path):
    model = _train(tmp_path, every=3, steps=5)
    rows = load_rows(tmp_path)
    assert {r["step"] for r in rows} == {0, 3}
    roles = {r["role"] for r in rows}
    expected = {"W", "A", "E1", "E2", "G", "U", "momentum",
                "bn_mean", "bn_std", "bn_xhat", "bn_gamma", "bn_beta"}  # fmt: skip
    assert expected <= roles
    layers = {r["layer"] for r in rows if r["role"] == "W"}
    assert layers == {"conv1", "conv2"}  # the float stem and head are not quantized
    # one naming: the layer is always a module path; the optimizer's roles of a BN parameter say
    # which one it is
    modules = dict(model.named_modules())
    assert {r["layer"] for r in rows} <= set(modules)
    assert {"G(bn_gamma)", "U(bn_beta)", "momentum(bn_gamma)"} <= roles
    assert {r["layer"] for r in rows if r["role"] == "G(bn_gamma)"} == {"bn1", "bn2", "bn3"}
    index = list(modules)
    assert all(index[r["layer_index"]] == r["layer"] for r in rows)  # network position
    for r in rows:
        assert 0.0 <= r["saturation"] <= 1.0 and r["distinct"] >= 1
    assert tap(object()) is None  # nothing left installed after the run


def test_code_histograms():
    """Codes are the outputs divided by their grid step, one bucket per code for 8 bits; Q's
    over-range codes land in the end buckets; the histograms of one role add up."""
    x = torch.tensor([2.0, -1.5, 0.5, 0.001, -0.003, 0.0039, 0.0, 0.25])
    h = code_histogram(x, clipped_direct_quantize(x, 8), "QC", 8)
    assert (h.limit, h.width, len(h.counts)) == (127, 1, 255)
    codes = {c - 127: int(n) for c, n in enumerate(h.counts) if n}
    assert codes == {127: 1, -127: 1, 64: 1, 0: 4, 32: 1}  # 0.0039·128 = 0.4992 → 0
    assert h.num == 8 and h.min == -127 and h.max == 127 and h.total == 96
    a = torch.tensor([0.5, 1.5, 3.0, 0.0])  # Q at 8 bits: 1.5 and 3.0 are beyond ±128 codes
    h = code_histogram(a, direct_quantize(a, 8), "Q", 8)
    assert h.limit == 128 and h.width == 1 and int(h.counts[-1]) == 2 and int(h.counts[128]) == 1
    g = torch.tensor([0.7, -0.2, 0.05])  # R = 2^round(log2 0.7) = 1/2, dr = 8: codes in −7…7
    out = constant_quantize(g, 8, 8, rounding="nearest")  # 8·g/R = 11.2, −3.2, 0.8
    h = code_histogram(g, out, "CQ", 8, dr=8)
    assert h.limit == 7 and {c - 7 for c, n in enumerate(h.counts) if n} == {7, -3, 1}
    e = torch.tensor([1.4, 1.0, 0.001, -0.5])  # FQ at 8 bits: fine step 2^-14 of R = 1
    h = code_histogram(e, flag_quantize(e, 8), "FQ", 8)
    assert h.limit == 2**14 and h.width == 65 and h.num == 4 and int(h.counts.sum()) == 4
    both = code_histogram(x, clipped_direct_quantize(x, 8), "QC", 8)
    both.add(code_histogram(x, clipped_direct_quantize(x, 8), "QC", 8))
    assert both.num == 16 and int(both.counts[127]) == 8
    with pytest.raises(ValueError, match="different code ranges"):
        both.add(h)


def test_off_when_not_recording():
    model = quantize_(create_model("small_cnn", width=4), "paper")
    diag = Diagnostics(model, every=10)
    with diag.step(3):
        assert tap(model.conv1) is None
    with diag.step(10):
        assert tap(model.conv1) is not None


def test_inspect_table_and_heatmaps(tmp_path, capsys):
    _train(tmp_path, every=1, steps=2)
    summary = summarize(load_rows(tmp_path))
    badness = [max(r["saturation"], r["underflow"], r.get("unchanged", 0)) for r in summary]
    assert badness == sorted(badness, reverse=True)  # worst first
    parser = argparse.ArgumentParser()
    inspect_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["inspect", str(tmp_path), "--top", "5"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "satur." in out and (tmp_path / "diagnostics.png").stat().st_size > 1000


def test_inspect_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--diag.every"):
        load_rows(tmp_path)
    (tmp_path / "diagnostics.jsonl").write_text('{"step": 0}\nnot json\n')
    with pytest.raises(ValueError, match="diagnostics.jsonl:2: not a JSON line"):
        load_rows(tmp_path)
    with pytest.raises(ValueError, match="every"):
        Diagnostics(torch.nn.Linear(1, 1), every=0)


def test_rows_are_json(tmp_path):
    _train(tmp_path, every=2, steps=1)
    for line in (tmp_path / "diagnostics.jsonl").read_text().splitlines():
        json.loads(line)
