"""Quantized activations beyond ReLU: each against its formula, equal to torch.nn with quantization
off, int8 codes attached only where the output is non-negative by construction."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference as ref
from wageubn import WAGEUBNConfig, quantize_, to_float_
from wageubn.nn import QuantConv2d
from wageubn.nn.activation import codes_of
from wageubn.nn.activations import QUANT_ACTIVATIONS

EXACT = {"rtol": 0, "atol": 0}
PAPER = WAGEUBNConfig.preset("paper")
FP32 = WAGEUBNConfig.preset("fp32")
INT8 = WAGEUBNConfig.preset("int8")

FLOATS = {  # one float module of each class, with non-default arguments where they exist
    "ReLU6": nn.ReLU6(),
    "LeakyReLU": nn.LeakyReLU(0.2),
    "Hardswish": nn.Hardswish(),
    "Hardsigmoid": nn.Hardsigmoid(),
    "SiLU": nn.SiLU(),
    "GELU": nn.GELU(),
    "GELU-tanh": nn.GELU(approximate="tanh"),
    "Sigmoid": nn.Sigmoid(),
    "Tanh": nn.Tanh(),
}
NONNEG = {"ReLU6", "Hardsigmoid", "Sigmoid"}


def _x(seed=0, shape=(3, 4, 5, 5), scale=4.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def _quant(name, config):
    f = FLOATS[name]
    return QUANT_ACTIVATIONS[type(f)].from_float(f, config)


def _float_derivative(f, x, g):
    """``f'(x)·g`` by PyTorch's autograd of the float module."""
    xx = x.detach().clone().requires_grad_()
    (dx,) = torch.autograd.grad(f(xx), xx, g)
    return dx


def test_every_listed_activation_has_a_quantized_module():
    assert set(QUANT_ACTIVATIONS) == {type(f) for f in FLOATS.values()}


@pytest.mark.parametrize(
    "name,inplace",
    [(n, False) for n in sorted(FLOATS)]
    + [(n, True) for n in sorted(FLOATS) if hasattr(FLOATS[n], "inplace")],
)
def test_fp32_equals_torch_bit_for_bit(name, inplace):
    f = copy.deepcopy(FLOATS[name])
    if inplace:
        f.inplace = True
    q = QUANT_ACTIVATIONS[type(f)].from_float(f, FP32)
    assert isinstance(q, type(f))
    x = _x(1)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = f(x1 * 1.0), q(x2 * 1.0)  # "* 1.0": a non-leaf input, so in place is allowed
    torch.testing.assert_close(y2, y1, **EXACT)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, **EXACT)


@pytest.mark.parametrize("name", sorted(FLOATS))
@pytest.mark.parametrize("e1_bits", [8, 5])
def test_paper_formula(name, e1_bits):
    """a = Q(f(x), 8); dL/dx = f'(x) · SQ(dL/da, k_E1) with f' PyTorch's own derivative."""
    q = _quant(name, PAPER.replace(error1=e1_bits))
    x = _x(2).requires_grad_()
    a = q(x)
    f = FLOATS[name]
    torch.testing.assert_close(a, ref.direct(f(x.detach()), 8).float(), **EXACT)
    g = torch.randn_like(a)
    a.backward(g)
    e1 = ref.shift(g, e1_bits).float()
    torch.testing.assert_close(x.grad, _float_derivative(f, x, e1), **EXACT)


@pytest.mark.parametrize("name", sorted(FLOATS))
@pytest.mark.parametrize("scale", [0.5, 40.0])
def test_int8_formula_and_codes(name, scale):
    """int8: A on the fit grid (codes within ±127, one power-of-two exponent), E1 with narrow
    clip ±127; codes attached only to outputs that are non-negative by construction."""
    q = _quant(name, INT8)
    x = _x(3, scale=scale).requires_grad_()
    a = q(x)
    f = FLOATS[name]
    torch.testing.assert_close(a.double(), ref.fit(f(x.detach()), 8), **EXACT)
    codes = codes_of(a, 8)
    if name in NONNEG:
        assert codes is not None and codes.nonneg and codes.codes.dtype == torch.int8
        assert int(codes.codes.min()) >= 0 and int(codes.codes.max()) <= 127
        torch.testing.assert_close(
            codes.codes.double() * 2.0 ** int(codes.exponent), a.double(), **EXACT
        )
    else:
        assert codes is None
    g = torch.randn_like(a)
    a.backward(g)
    e1 = ref.shift(g, 8, narrow=True).float()
    torch.testing.assert_close(x.grad, _float_derivative(f, x, e1), **EXACT)


def test_int8_attached_codes_feed_the_next_conv():
    """A Sigmoid's attached (non-negative) codes are what the int8 conv multiplies: its output is
    the conv of the decoded A, exactly."""
    torch.manual_seed(0)
    act = _quant("Sigmoid", INT8)
    conv = QuantConv2d(4, 3, 3, padding=1, bias=False, config=INT8)
    a = act(_x(4))
    z = conv(a)
    expect = F.conv2d(a, ref.clipped_direct(conv.weight, 8).float(), padding=1)
    torch.testing.assert_close(z.contiguous(), expect, **EXACT)


@pytest.mark.parametrize("name", ["GELU", "Sigmoid"])
def test_nan_propagates_and_is_not_raised(name):
    for cfg in (PAPER, INT8):
        q = _quant(name, cfg)
        x = _x(5).requires_grad_()
        a = q(x)
        g = torch.randn_like(a)
        g[0, 0, 0, 0] = float("nan")
        a.backward(g)
        assert bool(torch.isnan(x.grad).all())  # E1's scale is NaN: every element
    x = _x(6)
    x[0, 0, 0, 0] = float("nan")
    assert bool(torch.isnan(_quant(name, INT8)(x)).all())  # int8 A: the guard poisons all


def test_output_may_be_modified_in_place():
    """Callers (mobilenet_v3's in-place dropout, `out += x`) may modify the output in place."""
    for cfg in (PAPER, INT8):
        x = _x(7).requires_grad_()
        a = _quant("Hardswish", cfg)(x)
        a.mul_(2.0)
        a.sum().backward()
        assert x.grad is not None


def test_quantize_swaps_and_to_float_restores_arguments():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.LeakyReLU(0.3, inplace=True), nn.Conv2d(4, 4, 3),
        nn.GELU(approximate="tanh"), nn.Hardswish(), nn.Flatten(), nn.Linear(4, 2),
    )  # fmt: skip
    quantize_(net, "paper")
    assert type(net[1]).__name__ == "QuantLeakyReLU" and net[1].negative_slope == 0.3
    assert net[3].approximate == "tanh" and net[3].config == PAPER
    assert "A=8, E1=8" in repr(net[4])
    to_float_(net)
    assert type(net[1]) is nn.LeakyReLU and net[1].negative_slope == 0.3 and net[1].inplace
    assert type(net[3]) is nn.GELU and net[3].approximate == "tanh"
    assert type(net[4]) is nn.Hardswish
