"""torchvision's Swin window attention (V1, V2): fp32 ≡ torchvision, the quantized forward is
torchvision's on quantized weights, int8 integer kernels ≡ float simulation, Swin trains a step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import reference as ref
from wageubn import QSGD, WAGEUBNConfig, kernels, quantize_, to_float_
from wageubn.convert import float_calls
from wageubn.nn import QuantLinear, QuantShiftedWindowAttention, QuantShiftedWindowAttentionV2

torchvision = pytest.importorskip("torchvision")
swin = torchvision.models.swin_transformer
EXACT = {"rtol": 0, "atol": 0}
# alone in a model, the block's proj would be "the last Linear" (float head): quantize it too
PAPER = WAGEUBNConfig.preset("paper").replace(quantize_head=True)
INT8 = WAGEUBNConfig.preset("int8").replace(quantize_head=True)
BACKENDS = [b for b in ("reference", "cpu", "cuda") if b in kernels.available_backends()]
CASES = {
    "v1": (swin.ShiftedWindowAttention, QuantShiftedWindowAttention),
    "v2": (swin.ShiftedWindowAttentionV2, QuantShiftedWindowAttentionV2),
}


def _block(version, shift=(2, 2)):
    torch.manual_seed(0)
    return CASES[version][0](16, [4, 4], list(shift), 2)


def _x(seed=1):  # (B, H, W, C); 6x6 pads to two windows of 4 a side
    return torch.randn(2, 6, 6, 16, generator=torch.Generator().manual_seed(seed))


def _run(m, x):
    x = x.clone().requires_grad_()
    y = m(x)
    y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
    return [y.detach(), x.grad] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("version", sorted(CASES))
@pytest.mark.parametrize("shift", [(0, 0), (2, 2)])
def test_fp32_equals_torchvision(version, shift):
    f = _block(version, shift)
    q = quantize_(torch.nn.Sequential(copy.deepcopy(f)), "fp32")[0]
    assert type(q) is CASES[version][1] and type(q.qkv) is QuantLinear
    for a, b in zip(_run(f, _x()), _run(q, _x()), strict=True):
        torch.testing.assert_close(b, a, **EXACT)


@pytest.mark.parametrize("version", sorted(CASES))
def test_weights_only_is_torchvision_on_quantized_weights(version):
    """With only W quantized, the forward is torchvision's on QC(W, 8) (the 1/sqrt(d) scale is
    applied after the product here, before it there: float rounding apart, the same)."""
    f = _block(version)
    q = quantize_(torch.nn.Sequential(copy.deepcopy(f)),
                  PAPER.replace(activation=None, error2=None, weight_init=None))[0]  # fmt: skip
    with torch.no_grad():  # every Linear: qkv, proj and V2's bias MLP
        for lin in [m for m in f.modules() if isinstance(m, torch.nn.Linear)]:
            lin.weight.copy_(ref.clipped_direct(lin.weight, 8).float())
    torch.testing.assert_close(q(_x()), f(_x()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("version", sorted(CASES))
def test_int8_integer_kernels_equal_float_simulation(backend, version):
    runs = []
    for be in (backend, "float"):
        q = quantize_(torch.nn.Sequential(_block(version)), INT8.replace(int8_backend=be))[0]
        runs.append(_run(q, _x(2)))
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, **EXACT)


def test_swin_t_trains_and_round_trips():
    model = torchvision.models.swin_t(num_classes=10)
    keys = list(model.state_dict())
    quantize_(model, "paper")
    assert list(model.state_dict()) == keys
    rows = {(c.call, c.kind) for c in float_calls(model)}
    assert ("parameter relative_position_bias_table", "parameter") in rows
    opt = QSGD(model.parameters(), lr=0.05, config="paper")
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
    opt.step()
    to_float_(model)
    assert type(model.features[1][0].attn) is swin.ShiftedWindowAttention
    assert type(model.features[1][0].attn.qkv) is torch.nn.Linear
