"""Diagnostics: statistics right on hand-made tensors, recording on the right steps, inspect."""

from __future__ import annotations

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


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _row(step, layer, index, role, kind, sat=0.0, und=0.0, **extra):
    return {"step": step, "layer": layer, "layer_index": index, "role": role, "kind": kind,
            "bits": 8, "numel": 10, "exponent": 0, "saturation": sat, "underflow": und,
            "distinct": 3, **extra}  # fmt: skip


def test_inspect_overview_roles_by_layers_in_network_order():
    """Rows are roles (clipping ones only for saturation), columns layers in network order (not
    alphabetical), cells the mean over steps in percent, on a fixed scale whatever the data;
    cells at or above the look-here threshold carry their value."""
    rows = [
        _row(s, layer, index, role, kind, sat, und)
        for s in (10, 20)
        for layer, index, role, kind, sat, und in [
            ("zeta.conv", 1, "W", "QC", 0.0012 * s / 10, 0.1),  # 0.12 % and 0.24 %: calm
            ("zeta.conv", 1, "E2", "FQ", 0.05, 0.3),
            ("alpha.bn", 2, "bn_beta", "Q", 0.0, 1.0),
            ("alpha.bn", 2, "G(bn_gamma)", "Q", 0.0, 0.0),
            ("beta.relu", 3, "A", "Q", 0.0, 0.02),
        ]
    ] + [_row(10, "zeta.conv", 1, "U", "Q", unchanged=0.5), _row(20, "zeta.conv", 1, "U", "Q", unchanged=0.7)]  # fmt: skip
    for r in rows:
        if r["role"] == "U":
            r.pop("underflow")
    fig = inspect_cmd.overview_figure(rows)
    ax_sat, ax_und = fig.axes[:2]
    labels = [t.get_text() for t in ax_und.get_xticklabels()]
    assert labels == ["zeta.conv", "alpha.bn", "beta.relu"]
    assert [t.get_text() for t in ax_sat.get_yticklabels()] == ["W", "E2"]
    assert [t.get_text() for t in ax_und.get_yticklabels()] == ["W", "A", "E2", "U", "bn_beta",
                                                                "G(bn_gamma)"]  # fmt: skip
    sat = ax_sat.get_images()[0].get_array()
    assert sat[0, 0] == pytest.approx(0.18) and sat.mask[0, 1]  # W of a BN layer: none
    und = ax_und.get_images()[0].get_array()
    assert und[3, 0] == pytest.approx(60.0) and und[4, 1] == 100.0  # U: still; bn_beta
    norm = ax_sat.get_images()[0].norm
    assert list(norm.boundaries) == [0.0, 0.01, 0.1, inspect_cmd.SATURATION_LOOK, 5.0, 20.0, 100.0]
    texts = sorted(t.get_text() for ax in (ax_sat, ax_und) for t in ax.texts)
    assert texts == ["100", "30", "5.0", "60"]  # E2 clips 5 %; underflow 30 %, 100 %; U 60 %
    colorbar_labels = [ax.get_ylabel() for ax in fig.axes[2:]]
    assert colorbar_labels == ["% clipped; look here ≥ 1%", "% flushed to 0; look here ≥ 20%"]


def test_inspect_resnet20_overview_size(tmp_path):
    """ResNet-20's overview is a readable picture, not the old 1320×8683 px column."""
    torch.manual_seed(0)
    model = quantize_(create_model("preact_resnet20"), "paper")
    opt = QSGD(
        model.parameters(), lr=0.05, config="paper", generator=torch.Generator().manual_seed(0)
    )
    diag = Diagnostics(model, every=1, path=tmp_path / "diagnostics.jsonl")
    with diag.step(0):
        F.cross_entropy(model(torch.randn(2, 3, 8, 8)), torch.tensor([1, 2])).backward()
        opt.step()
    rows = load_rows(tmp_path)
    width, height = _png_size(inspect_cmd.overview_map(rows, tmp_path / "o.png"))
    assert 1000 <= width <= 2000 and 500 <= height <= 1000
    layers = {r["layer"] for r in rows}
    assert len(layers) > 55  # every quantized layer has its column


def test_inspect_command_overview_selection_and_errors(tmp_path, capsys):
    from wageubn import cli

    _train(tmp_path, every=1, steps=3)
    summary = summarize(load_rows(tmp_path))
    badness = [max(r["saturation"], r["underflow"], r.get("unchanged", 0)) for r in summary]
    assert badness == sorted(badness, reverse=True)  # worst first
    assert cli.main(["inspect", str(tmp_path), "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "satur." in out and "overview map:" in out and len(out.splitlines()) == 2 + 5 + 2
    assert (tmp_path / "diagnostics.png").stat().st_size > 1000
    assert cli.main(["inspect", str(tmp_path), "--role", "E2", "--layer", "conv*"]) == 0
    table = capsys.readouterr().out.splitlines()[2:-2]
    assert sorted(line.split()[:2] for line in table) == [["conv1", "E2"], ["conv2", "E2"]]
    assert (tmp_path / "diagnostics-detail.png").stat().st_size > 1000
    rows = inspect_cmd.select(load_rows(tmp_path), ["E2", "G*"], ["conv2"])
    fig = inspect_cmd.detail_figure(rows)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["conv2  E2", "conv2  G"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "1", "2"]
    for argv in (["--role", "E3"], ["--layer", "layer3.*"]):
        assert cli.main(["inspect", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "matches no" in err


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
