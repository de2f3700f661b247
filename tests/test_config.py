"""WAGEUBNConfig: presets match the contract's table, validation names the value and the fix."""

from __future__ import annotations

import dataclasses

import pytest

from wageubn import PRESETS, ROLES, WAGEUBNConfig


def test_paper_preset_is_the_contract_table():
    cfg = WAGEUBNConfig.preset("paper")
    expected = {
        "weight": 8, "activation": 8, "grad": 8, "error1": 8, "error2": 8,
        "bn_gamma": 8, "bn_beta": 8, "bn_xhat": 8, "bn_mean": 16, "bn_std": 16,
        "bn_grad": 15, "lr": 10, "momentum": 13, "update": 24, "weight_init": 16,
    }  # fmt: skip
    assert {r: cfg.bits(r) for r in ROLES} == expected
    assert cfg.grad_rounding == "stochastic" and cfg.grad_range == 128
    assert cfg.bn_eps == 2.0**-15 and cfg.arithmetic == "simulated"
    assert not cfg.quantize_stem and not cfg.quantize_head
    assert cfg == WAGEUBNConfig()  # the defaults are the paper preset


def test_other_presets():
    assert WAGEUBNConfig.preset("paper_e2_16").error2 == 16
    assert WAGEUBNConfig.preset("paper_e2_16").replace(error2=8) == WAGEUBNConfig.preset("paper")
    fp32 = WAGEUBNConfig.preset("fp32")
    assert all(fp32.bits(r) is None for r in ROLES) and not fp32.quantizes_anything
    int8 = WAGEUBNConfig.preset("int8")
    assert int8.arithmetic == "int8" and int8.weight == 8
    assert set(PRESETS) == {"paper", "paper_e2_16", "fp32", "int8"}
    assert WAGEUBNConfig.preset("int8").name == "int8"


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        WAGEUBNConfig().weight = 4  # type: ignore[misc]


def test_unknown_preset_suggests():
    with pytest.raises(ValueError, match="did you mean 'paper'"):
        WAGEUBNConfig.preset("papr")
    with pytest.raises(TypeError):
        WAGEUBNConfig.preset(8)  # type: ignore[arg-type]


def test_unknown_role_suggests():
    with pytest.raises(ValueError, match="'eror2'.*did you mean 'error2'"):
        WAGEUBNConfig().replace(eror2=16)
    with pytest.raises(ValueError, match="did you mean 'activation'"):
        WAGEUBNConfig().bits("activations")
    with pytest.raises(ValueError, match="did you mean 'momentum'"):
        WAGEUBNConfig.from_dict({"preset": "paper", "momentun": 13})


@pytest.mark.parametrize("bad", [1, 0, 33, 64, -8])
def test_bits_out_of_range(bad):
    with pytest.raises(ValueError, match=rf"weight={bad} is outside \[2, 32\]"):
        WAGEUBNConfig(weight=bad)


@pytest.mark.parametrize("bad", [8.0, "8", True])
def test_bits_wrong_type(bad):
    with pytest.raises(ValueError, match="must be an int"):
        WAGEUBNConfig(activation=bad)


def test_errors_are_collected_together():
    with pytest.raises(ValueError) as info:
        WAGEUBNConfig(weight=1, error2=40, grad_rounding="nearst", arithmetic="int4")
    msg = str(info.value)
    for part in ("weight=1", "error2=40", "did you mean 'nearest'", "arithmetic='int4'"):
        assert part in msg


def test_int8_arithmetic_needs_8_bit_operands():
    with pytest.raises(ValueError, match="needs error2 <= 8 bits, got 16"):
        WAGEUBNConfig.preset("int8").replace(error2=16)
    with pytest.raises(ValueError, match="needs weight quantized"):
        WAGEUBNConfig.preset("int8").replace(weight=None)
    with pytest.raises(ValueError, match="grad_range <= 128"):
        WAGEUBNConfig.preset("int8").replace(grad_range=256)


def test_other_field_validation():
    with pytest.raises(ValueError, match="grad_range"):
        WAGEUBNConfig(grad_range=1)
    with pytest.raises(ValueError, match="bn_eps"):
        WAGEUBNConfig(bn_eps=0.0)
    with pytest.raises(ValueError, match="quantize_stem"):
        WAGEUBNConfig(quantize_stem="yes")  # type: ignore[arg-type]


def test_dict_round_trip():
    cfg = WAGEUBNConfig.preset("paper_e2_16").replace(quantize_head=True)
    again = WAGEUBNConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(TypeError):
        WAGEUBNConfig.from_dict([("weight", 8)])  # type: ignore[arg-type]
