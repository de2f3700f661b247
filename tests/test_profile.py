"""``wageubn.profile``: MAC counts from the dispatched ops equal the analytic formulas, in every
preset and both views; energy is counts times the Horowitz table; the CLI writes what it prints."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

from wageubn import WAGEUBNConfig
from wageubn.profile import ProfileError, grid_bits, profile_step
from wageubn.profile.command import add_parser, run
from wageubn.profile.energy import (
    TABLE,
    OpType,
    memory_energy_pj,
    op_area_um2,
    op_energy_pj,
)

PRESETS = ["fp32", "paper", "int8"]


def _config(preset: str) -> WAGEUBNConfig:
    """The preset with the stem/head rule off: every conv/linear below is a quantized layer."""
    return WAGEUBNConfig.preset(preset).replace(quantize_stem=True, quantize_head=True)


def _conv_pair() -> nn.Module:
    # conv1: 3→8, 3×3, stride 2 on 9×9 → 5×5; conv2: 8→16, 3×3, pad 1 → 5×5
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
    )


N = 4
P1 = N * 8 * 5 * 5 * 3 * 3 * 3  # N·O·Ho·Wo·C/g·kh·kw
P2 = N * 16 * 5 * 5 * 8 * 3 * 3


@pytest.mark.parametrize("preset", PRESETS)
def test_conv_macs_equal_the_formula(preset):
    """Forward, input-gradient and weight-gradient products of quantized convs are counted as
    N·O·Ho·Wo·C/g·kh·kw each; conv1's input needs no gradient, so it has no input-grad product."""
    p = profile_step(_conv_pair(), _config(preset), batch=N, input_size=9)
    q = "quantized"
    assert p.count(q, "mac", direction="forward") == P1 + P2
    assert p.count(q, "mac", direction="input_grad") == P2
    assert p.count(q, "mac", direction="weight_grad") == P1 + P2
    if preset == "int8":
        # integer kernels: the forward is one u8/s8 conv per layer; the backward runs each
        # product once per E2 plane (coarse and fine), plus whatever zero taps the kernel adds
        assert p.count("executed", "mac", fmt="float") == 0
        assert p.count(q, "mac", fmt="float") == 0
        assert p.count("executed", "mac", fmt="int", phase="forward") == P1 + P2
        assert p.count("executed", "mac", fmt="int", phase="backward") >= 2 * (P1 + 2 * P2)
    else:
        assert p.count("executed", "mac", fmt="int") == 0
        assert p.count("executed", "mac", phase="forward") == P1 + P2
        assert p.count("executed", "mac", direction="input_grad") == P2
        assert p.count("executed", "mac", direction="weight_grad") == P1 + P2
    if preset == "fp32":
        assert p.count(q, "mac", fmt="int") == 0
    if preset == "paper":
        # conv2's input is a QuantReLU output (on the 8-bit grid): its three products are
        # 8b×8b; conv1's input is the raw image, so its two products stay fp32
        assert p.count(q, "mac", fmt="int") == 3 * P2
        assert p.count(q, "mac", fmt="float") == 2 * P1


M, K1, H1, C = 6, 20, 12, 5
L1, L2 = M * K1 * H1, M * H1 * C


@pytest.mark.parametrize("preset", PRESETS)
def test_linear_macs_equal_the_formula(preset):
    """Linear products are M·K·N per direction; in int8 the integer GEMMs run each backward
    product exactly twice (the two E2 planes) and nothing in float."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(K1, H1), nn.ReLU(), nn.Linear(H1, C))
    p = profile_step(model, _config(preset), batch=M)
    assert p.num_classes == C
    for view in ("executed", "quantized") if preset != "int8" else ("quantized",):
        assert p.count(view, "mac", phase="forward") == L1 + L2
        assert p.count(view, "mac", phase="backward") == L1 + 2 * L2
    if preset == "int8":
        assert p.count("executed", "mac", fmt="float") == 0
        assert p.count("executed", "mac", fmt="int", phase="forward") == L1 + L2
        assert p.count("executed", "mac", fmt="int", phase="backward") == 2 * (L1 + 2 * L2)
        assert p.count("quantized", "mac", fmt="float") == 0
    elif preset == "fp32":
        assert p.count("executed", "mac", fmt="int") == p.count("quantized", "mac", fmt="int") == 0


def test_default_stem_and_head_stay_float_in_int8():
    """With the released code's rule the stem and head are the only float32 products in int8:
    the stem's forward and weight gradient (the data needs no gradient), the head's three."""
    p = profile_step("small_cnn", "int8", batch=2)
    stem = 2 * 16 * 28 * 28 * 1 * 9  # 1→16 channels, 3×3, 28×28
    head = 2 * (64 * 7 * 7) * 10  # flatten of a 64×7×7 map → 10 classes
    assert p.count("executed", "mac", fmt="float", phase="forward") == stem + head
    assert p.count("executed", "mac", fmt="float") == 2 * stem + 3 * head
    assert p.count("executed", "mac", fmt="int", phase="forward") > 0


def test_int8_saves_fewer_bytes_than_fp32():
    """A quantized conv keeps int8/uint8 codes for backward (1 byte each), fp32 keeps floats;
    neither keeps a copy of the weight."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False))

    def saved(preset):
        p = profile_step(model, _config(preset), batch=4, input_size=16)
        return sum(m.nbytes for m in p.memory if m.role == "saved: quant layers")

    fp32, int8 = saved("fp32"), saved("int8")
    assert fp32 == 4 * 3 * 16 * 16 * 4  # the input (the weight is a parameter, counted there)
    assert int8 == 4 * 3 * 16 * 16  # input codes (the weight's are rebuilt in backward)
    assert int8 < fp32 / 3


def test_energy_is_counts_times_the_table():
    """Every energy is count × the published figure; a MAC is its multiply plus its accumulate."""
    i8 = OpType.mac("int", 8, 8, 32, "int8×int8→int32")
    f32 = OpType.mac("float", 32, 32, 32, "fp32×fp32→fp32")
    assert op_energy_pj(i8) == pytest.approx(0.2 + 0.1)
    assert op_energy_pj(f32) == pytest.approx(3.7 + 0.9)
    assert op_area_um2(i8) == pytest.approx(282 + 137)
    for (op, fmt, bits), (pj, um2) in TABLE.items():
        t = OpType.elementwise(op, fmt, bits, "x")
        assert (op_energy_pj(t), op_area_um2(t)) == pytest.approx((pj, um2))
        assert t.exact
    assert not OpType.elementwise("add", "int", 64, "int64").exact
    assert memory_energy_pj(64, "dram") == pytest.approx(8 * 1300.0)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(K1, H1), nn.ReLU(), nn.Linear(H1, C))
    p = profile_step(model, _config("paper"), batch=M)
    for view in ("executed", "quantized"):
        want = sum(n * op_energy_pj(t) for t, n in p.ops(view).items())
        assert p.compute_energy_pj(view) == pytest.approx(want, rel=1e-12)
        assert p.memory_energy_pj(view) == pytest.approx(p.memory_bytes(view) / 8 * 1300.0)
    macs = {t.label: n for t, n in p.ops("quantized").items() if t.op == "mac"}
    assert macs["8b×8b→int32 (A×W)"] == L2  # layer 2 reads the QuantReLU output
    assert p.compute_energy_pj("quantized", "mac") == pytest.approx(
        3 * L2 * 0.3 + 2 * L1 * 4.6, rel=1e-12
    )


def test_grid_bits():
    """The narrowest c·2^e form: 8-bit weights, uint8 codes, a float tensor that fits none."""
    w = torch.tensor([-127, 3, 64]) / 128.0
    assert grid_bits(w) == 8
    assert grid_bits(torch.tensor([0, 5, 100], dtype=torch.uint8)) == 7
    assert grid_bits(torch.tensor([0.5, 0.25])) == 2
    assert grid_bits(torch.tensor([1.0, 1e-9])) is None


def _parser():
    parser = argparse.ArgumentParser(prog="wageubn")
    add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_prints_tables_and_writes_json_and_plot(tmp_path, capsys):
    """``profile`` through argparse: tables for the preset, the fp32 comparison, JSON whose
    counts are the printed ones, and a PNG."""
    out_json, out_png = tmp_path / "p.json", tmp_path / "p.png"
    args = _parser().parse_args(
        ["profile", "--model", "small_cnn", "--preset", "int8", "--batch", "2",
         "--json", str(out_json), "--plot", str(out_png)]
    )  # fmt: skip
    assert args.func is run
    assert run(args) == 0
    text = capsys.readouterr().out
    assert "Compute as executed" in text and "Compute as quantized" in text
    assert "relative to fp32" in text and "Horowitz" in text
    data = json.loads(out_json.read_text())
    assert [p["preset"] for p in data["profiles"]] == ["fp32", "int8"]
    int8 = data["profiles"][1]
    macs = sum(r["count"] for r in int8["ops"]["quantized"] if r["op"] == "mac")
    assert f"{macs:,}" in text
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--preset", "papr"], "did you mean 'paper'"),
        (["--preset", "int8", "--input-size", "1", "2", "3"], "S or H W"),
    ],
)
def test_cli_user_errors(argv, match):
    args = _parser().parse_args(["profile", "--model", "small_cnn", "--batch", "2", *argv])
    with pytest.raises(ProfileError, match=match):
        run(args)


def test_unknown_model_is_a_profile_error():
    with pytest.raises(ProfileError, match="small_cnn"):
        profile_step("small_cn", "fp32", batch=2)


def test_group_small_folds_categories_and_keeps_totals():
    """Categories under 3 % of every bar fold into one "other"; at most 8 stay, largest first."""
    from wageubn.profile.report import group_small

    bars = [
        {"mac fp32": 900.0, "add fp32": 60.0, "add bool": 1.0, "mul fp64": 0.5},
        {"mac int8": 100.0, "mul fp32": 40.0, "add bool": 2.0, "add int64": 1.0, "add fp32": 1.0},
    ]
    keys, grouped = group_small(bars)
    assert keys == ["mac fp32", "mac int8", "add fp32", "mul fp32", "other (3 types)"]
    for before, after in zip(bars, grouped, strict=True):
        assert sum(after.values()) == pytest.approx(sum(before.values()))
    assert grouped[1]["other (3 types)"] == 3.0 and grouped[0]["add fp32"] == 60.0
    many = [{f"c{i}": 10.0 + i for i in range(12)}]
    keys, grouped = group_small(many)
    assert len(keys) == 9 and keys[:2] == ["c11", "c10"] and keys[-1] == "other (4 types)"
    assert grouped[0]["other (4 types)"] == 10 + 11 + 12 + 13
    one = [{"big": 100.0, "tiny": 0.1}]
    assert group_small(one)[0] == ["big", "tiny"]  # a single small category keeps its name
