"""QuantConv1d and QuantEmbedding: the formula bit for bit, fp32 ≡ torch.nn, int8 on integer codes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference as ref
from wageubn import QSGD, UnsupportedModuleError, WAGEUBNConfig, kernels, quantize_, to_float_
from wageubn.nn import QuantConv1d, QuantEmbedding
from wageubn.optim import parameter_roles

EXACT = {"rtol": 0, "atol": 0}
PAPER = WAGEUBNConfig.preset("paper")
FP32 = WAGEUBNConfig.preset("fp32")
INT8 = WAGEUBNConfig.preset("int8")
BACKENDS = [b for b in ("reference", "cpu", "cuda") if b in kernels.available_backends()]
GEOMS = [
    (1, 1, 1, 1),
    (2, 0, 1, 1),
    (1, 2, 2, 1),
    (1, 1, 1, 2),
]  # stride, padding, dilation, groups


def _x(shape, seed=0, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("geom", GEOMS)
def test_conv1d_paper_formula(geom):
    stride, padding, dilation, groups = geom
    torch.manual_seed(0)
    f = nn.Conv1d(4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
    q = QuantConv1d.from_float(copy.deepcopy(f), PAPER)
    x = _x((2, 4, 11)).requires_grad_()
    z = q(x)
    wq = ref.clipped_direct(f.weight, 8).float()
    kw = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    torch.testing.assert_close(z, F.conv1d(x.detach(), wq, f.bias, **kw), **EXACT)
    g = _x(z.shape, 1)
    z.backward(g)
    e2 = ref.flag(g, 8).float()
    xx = x.detach().clone().requires_grad_()
    ww = wq.clone().requires_grad_()
    F.conv1d(xx, ww, **kw).backward(e2)
    torch.testing.assert_close(x.grad, xx.grad, **EXACT)
    torch.testing.assert_close(q.weight.grad, ww.grad, **EXACT)
    torch.testing.assert_close(q.bias.grad, e2.sum((0, 2)), **EXACT)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geom", GEOMS)
def test_conv1d_int8_integer_kernels_equal_float_simulation(backend, geom):
    stride, padding, dilation, groups = geom
    out = []
    for be in (backend, "float"):
        torch.manual_seed(0)
        q = QuantConv1d(4, 6, 3, stride=stride, padding=padding, dilation=dilation,
                        groups=groups, config=INT8.replace(int8_backend=be))  # fmt: skip
        x = _x((2, 4, 11), 2, 3.0).requires_grad_()
        z = q(x)
        z.backward(_x(z.shape, 3))
        out.append((z.detach(), x.grad, q.weight.grad, q.bias.grad))
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a.contiguous(), b.contiguous(), **EXACT)


def test_conv1d_int8_forward_formula_and_unbatched_input():
    torch.manual_seed(1)
    q = QuantConv1d(3, 4, 3, padding=1, bias=False, config=INT8)
    x = torch.rand(2, 3, 9) * 0.99  # below 127/128: A is the paper's Q(x, 8)
    expect = F.conv1d(ref.direct(x, 8).float(), ref.clipped_direct(q.weight, 8).float(), padding=1)
    torch.testing.assert_close(q(x).contiguous(), expect, **EXACT)
    torch.testing.assert_close(q(x[0]).contiguous(), expect[0], **EXACT)


def test_conv1d_fp32_equals_torch_and_int8_padding_is_refused():
    f = nn.Conv1d(3, 4, 3, padding=1)
    q = QuantConv1d.from_float(copy.deepcopy(f), FP32)
    x = _x((2, 3, 7))
    torch.testing.assert_close(q(x), f(x), **EXACT)
    with pytest.raises(UnsupportedModuleError, match="0 is a Conv1d with padding='same'"):
        quantize_(nn.Sequential(nn.Conv1d(3, 3, 3, padding="same"), nn.Conv1d(3, 3, 1)),
                  INT8.replace(quantize_stem=True))  # fmt: skip


def _embedding(**kwargs):
    torch.manual_seed(2)
    return nn.Embedding(7, 5, **kwargs)


IDX = torch.tensor([[1, 3, 3, 0], [6, 1, 2, 3]])


@pytest.mark.parametrize("padding_idx", [None, 3])
@pytest.mark.parametrize("config", [PAPER, INT8], ids=["paper", "int8"])
def test_embedding_formula(padding_idx, config):
    """Rows of QC(W, 8); dL/dW[i] = Σ over the uses of row i of FQ(dL/dz, 8) (padding row: 0)."""
    f = _embedding(padding_idx=padding_idx)
    q = QuantEmbedding.from_float(copy.deepcopy(f), config)
    z = q(IDX)
    wq = ref.clipped_direct(f.weight, 8).float()
    torch.testing.assert_close(z, wq[IDX], **EXACT)
    g = _x(z.shape, 4)
    z.backward(g)
    e2 = ref.flag(g, 8).float()
    expect = torch.zeros_like(wq).index_add_(0, IDX.reshape(-1), e2.reshape(-1, 5))
    if padding_idx is not None:
        expect[padding_idx] = 0
    torch.testing.assert_close(q.weight.grad, expect, **EXACT)


def test_embedding_int8_backward_sums_integer_codes():
    """Many uses of one row: the int8 sum is exact (integer), the float sum of paper rounds."""
    q = QuantEmbedding.from_float(_embedding(), INT8)
    idx = torch.zeros(3000, dtype=torch.long)
    z = q(idx)
    g = _x(z.shape, 5) * torch.logspace(-3, 0, 3000).unsqueeze(1)
    z.backward(g)
    planes_value = ref.flag(g, 8)  # float64, exact
    torch.testing.assert_close(q.weight.grad[0], planes_value.sum(0).float(), **EXACT)


def test_embedding_fp32_equals_torch_and_roles():
    f = _embedding(padding_idx=0, scale_grad_by_freq=True)
    q = QuantEmbedding.from_float(copy.deepcopy(f), FP32)
    z1, z2 = f(IDX), q(IDX)
    torch.testing.assert_close(z2, z1, **EXACT)
    g = _x(z1.shape, 6)
    z1.backward(g)
    z2.backward(g)
    torch.testing.assert_close(q.weight.grad, f.weight.grad, **EXACT)
    assert parameter_roles(q)["weight"] == "weight"
    assert type(q.to_float()) is nn.Embedding and q.to_float().padding_idx == 0


def test_embedding_trains_with_qsgd_and_unsupported_options_are_named():
    model = nn.Sequential(_embedding(), nn.Flatten(), nn.Linear(20, 3))
    quantize_(model, "int8")
    w = model[0].weight.detach().double() * 2**15
    assert torch.equal(w, torch.round(w))  # snapped to the weight_init grid
    opt = QSGD(model.parameters(), lr=0.25, config="int8")
    before = model[0].weight.detach().clone()
    F.cross_entropy(model(torch.tensor([[1, 2, 3, 4]])), torch.tensor([2])).backward()
    opt.step()
    assert not torch.equal(before, model[0].weight)
    to_float_(model)
    bad = nn.Sequential(
        nn.Embedding(5, 4, max_norm=1.0), nn.Embedding(5, 4, sparse=True),
        nn.Embedding(5, 4, scale_grad_by_freq=True),
    )  # fmt: skip
    with pytest.raises(UnsupportedModuleError) as info:
        quantize_(bad, "int8")
    msg = str(info.value)
    assert "3 modules cannot be converted" in msg
    for part in ("0 is an Embedding with max_norm=1.0", "1 is an Embedding with sparse=True",
                 "2 is an Embedding with scale_grad_by_freq=True"):  # fmt: skip
        assert part in msg
    quantize_(nn.Sequential(nn.Embedding(5, 4, scale_grad_by_freq=True)), "paper")  # float OK
