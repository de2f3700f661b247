"""Quantized LayerNorm, GroupNorm, BatchNorm1d and torchvision's LayerNorm2d: the BN contract over
each one's statistics axes, bit for bit against the reference; equal to torch.nn with quantization
off; the finite backward at zero variance; γ/β tagged for QSGD's "bn" role."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import reference as ref
from wageubn import QSGD, WAGEUBNConfig, quantize_, to_float_
from wageubn.nn import (
    QuantBatchNorm1d,
    QuantGroupNorm,
    QuantLayerNorm,
    QuantLayerNorm2d,
    QuantReLU,
)
from wageubn.optim import parameter_roles
from wageubn.quant.fusion import fusion

EXACT = {"rtol": 0, "atol": 0}
PAPER = WAGEUBNConfig.preset("paper")
FP32 = WAGEUBNConfig.preset("fp32")
INT8 = WAGEUBNConfig.preset("int8")
torchvision = pytest.importorskip("torchvision")
LayerNorm2d = torchvision.models.convnext.LayerNorm2d


def _randomize(mod):
    with torch.no_grad():
        if getattr(mod, "weight", None) is not None:
            mod.weight.uniform_(0.5, 1.5)
        if getattr(mod, "bias", None) is not None:
            mod.bias.uniform_(-0.3, 0.3)
    return mod


def _x(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3 + 1


# (float module, quantized class, input shape, how the reference sees x, gamma and dims)
CASES = {
    "LayerNorm": (
        lambda: nn.LayerNorm(12),
        QuantLayerNorm,
        (4, 5, 12),
        lambda x, w: (x.reshape(-1, 12), w.reshape(1, 12), (1,)),
    ),
    "LayerNorm-2d-shape": (
        lambda: nn.LayerNorm((3, 4)),
        QuantLayerNorm,
        (5, 3, 4),
        lambda x, w: (x.reshape(5, 12), w.reshape(1, 12), (1,)),
    ),
    "GroupNorm": (
        lambda: nn.GroupNorm(3, 6),
        QuantGroupNorm,
        (4, 6, 5, 5),
        lambda x, w: (x.reshape(4, 3, 2, 25), w.reshape(1, 3, 2, 1), (2, 3)),
    ),
    "LayerNorm2d": (
        lambda: LayerNorm2d(6),
        QuantLayerNorm2d,
        (3, 6, 4, 5),
        lambda x, w: (x.reshape(3, 6, 20), w.reshape(1, 6, 1), (1,)),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_paper_formula_forward_backward(case):
    make, qcls, shape, view = CASES[case]
    torch.manual_seed(0)
    f = _randomize(make())
    q = qcls.from_float(copy.deepcopy(f), PAPER)
    x = _x(shape, 1).requires_grad_()
    y = q(x)
    xr, w, dims = view(x.detach(), f.weight.detach())
    _, b, _ = view(x.detach(), f.bias.detach())
    xr = xr.clone().requires_grad_()
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    expect = ref.ref_norm(xr, w, b, dims)
    torch.testing.assert_close(y, expect.reshape(shape), **EXACT)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    y.backward(g)
    expect.backward(g.reshape(expect.shape))
    torch.testing.assert_close(x.grad, xr.grad.reshape(shape), **EXACT)
    torch.testing.assert_close(q.weight.grad, w.grad.reshape(q.weight.shape), **EXACT)
    torch.testing.assert_close(q.bias.grad, b.grad.reshape(q.bias.shape), **EXACT)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("train", [True, False])
def test_fp32_equals_torch_bit_for_bit(case, train):
    make, qcls, shape, _ = CASES[case]
    f = _randomize(make()).train(train)
    q = qcls.from_float(copy.deepcopy(f), FP32).train(train)
    x = _x(shape, 3)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = f(x1), q(x2)
    torch.testing.assert_close(y2, y1, **EXACT)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, **EXACT)
    torch.testing.assert_close(q.weight.grad, f.weight.grad, **EXACT)
    torch.testing.assert_close(q.bias.grad, f.bias.grad, **EXACT)


@pytest.mark.parametrize("case", sorted(CASES))
def test_zero_variance_backward_is_finite_and_the_formula(case):
    """A group with σ = 0 (constant input): the σ-path term of dx is 0 there, not NaN."""
    make, qcls, shape, view = CASES[case]
    q = qcls.from_float(_randomize(make()), PAPER)
    x = torch.full(shape, 0.75, requires_grad=True)
    y = q(x)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    y.backward(g)
    assert bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(q.weight.grad).all())
    xr, w, dims = view(x.detach(), q.weight.detach())
    _, b, _ = view(x.detach(), q.bias.detach())
    xr = xr.clone().requires_grad_()
    expect = ref.ref_norm(xr, w, b, dims)
    expect.backward(g.reshape(expect.shape))
    torch.testing.assert_close(x.grad, xr.grad.reshape(shape), **EXACT)


@pytest.mark.parametrize("case", sorted(CASES))
def test_int8_computes_as_paper(case):
    """Elementwise steps may be float in int8 arithmetic (§6): the same values as paper."""
    make, qcls, shape, _ = CASES[case]
    f = _randomize(make())
    out = []
    for cfg in (PAPER, INT8):
        q = qcls.from_float(copy.deepcopy(f), cfg)
        x = _x(shape, 5).requires_grad_()
        y = q(x)
        y.backward(torch.ones_like(y))
        out.append((y.detach(), x.grad, q.weight.grad))
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, **EXACT)


def test_nan_propagates():
    q = QuantLayerNorm(8, config=PAPER)
    x = _x((3, 8))
    x[1, 2] = float("nan")
    y = q(x)
    assert bool(torch.isnan(y[1]).all()) and bool(torch.isfinite(y[0]).all())


@pytest.mark.parametrize("shape", [(8, 6), (4, 6, 5)])
def test_batchnorm1d_is_the_bn_contract(shape):
    """BatchNorm1d: the BN reference over (N, L), running statistics as torch.nn.BatchNorm1d.
    The kernels' eager code, whose float64 sums the reference pins; the compiled kernels add
    them in another order (a last float32 bit of dx, tests/test_fusion.py)."""
    torch.manual_seed(1)
    f = _randomize(nn.BatchNorm1d(6))
    q = QuantBatchNorm1d.from_float(copy.deepcopy(f), PAPER)
    assert isinstance(q, nn.BatchNorm1d)
    x = _x(shape, 6).requires_grad_()
    with fusion(False):
        y = q(x)
    x4 = x.detach().reshape(shape[0], 6, -1, 1).clone().requires_grad_()
    w, b = f.weight.detach().clone().requires_grad_(), f.bias.detach().clone().requires_grad_()
    expect = ref.ref_bn(x4, w, b)
    torch.testing.assert_close(y, expect.reshape(shape), **EXACT)
    g = torch.randn(shape)
    with fusion(False):
        y.backward(g)
    expect.backward(g.reshape(expect.shape))
    torch.testing.assert_close(x.grad, x4.grad.reshape(shape), **EXACT)
    torch.testing.assert_close(q.weight.grad, w.grad, **EXACT)
    f(x.detach())
    torch.testing.assert_close(q.running_mean, f.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(q.running_var, f.running_var, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="2D or 3D"):
        q(torch.randn(2, 6, 3, 3))
    assert type(q.to_float()) is nn.BatchNorm1d


@pytest.mark.parametrize("config", [PAPER, INT8], ids=["paper", "int8"])
def test_batchnorm1d_fused_with_relu_equals_unfused(config):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    cfg = config.replace(quantize_stem=True, quantize_head=True)
    fused = quantize_(copy.deepcopy(net), cfg)
    assert fused[1].fused_relu is fused[2]
    plain = quantize_(copy.deepcopy(net), cfg)
    plain[1].fuse_relu(None)
    x = _x((8, 5), 7)
    outs = []
    for m in (fused, plain):
        xx = x.clone().requires_grad_()
        y = m(xx)
        y.backward(torch.ones_like(y))
        outs.append((y.detach(), xx.grad, m[1].weight.grad))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, **EXACT)
    assert isinstance(fused[2], QuantReLU)


def test_quantize_swaps_norms_tags_roles_and_snaps_to_grid():
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.GroupNorm(2, 6), LayerNorm2d(6), nn.Flatten(),
        nn.LayerNorm(6 * 4 * 4), nn.Linear(96, 4), nn.BatchNorm1d(4), nn.Linear(4, 2),
    )  # fmt: skip
    _randomize(net[1])
    quantize_(net, "paper")
    assert [type(m).__name__ for m in net][1:7:] == [
        "QuantGroupNorm", "QuantLayerNorm2d", "Flatten", "QuantLayerNorm", "QuantLinear",
        "QuantBatchNorm1d",
    ]  # fmt: skip
    roles = parameter_roles(net)
    for i in (1, 2, 4, 6):
        assert roles[f"{i}.weight"] == "bn" and roles[f"{i}.bias"] == "bn"
        w = net[i].weight.detach().double() * 2**23
        assert torch.equal(w, torch.round(w))  # the update (24-bit) grid
    opt = QSGD(net.parameters(), lr=0.5, config=PAPER)
    y = net(_x((4, 3, 6, 6)))
    y.sum().backward()
    opt.step()
    to_float_(net)
    assert [type(m) for m in net][1:3] == [nn.GroupNorm, LayerNorm2d]
    assert type(net[4]) is nn.LayerNorm and type(net[6]) is nn.BatchNorm1d
    assert parameter_roles(net)["1.weight"] == "float"


def test_layernorm_without_affine_and_without_bias():
    for f in (nn.LayerNorm(8, elementwise_affine=False), nn.LayerNorm(8, bias=False)):
        q = QuantLayerNorm.from_float(f, PAPER)
        x = _x((3, 8), 8)
        gamma = torch.ones(1, 8) if f.weight is None else f.weight.detach().reshape(1, 8)
        expect = ref.ref_norm(x, gamma, torch.zeros(1, 8), (1,))
        torch.testing.assert_close(q(x), expect, **EXACT)
        assert type(q.to_float()) is nn.LayerNorm and (q.to_float().bias is None) == (
            f.bias is None
        )
