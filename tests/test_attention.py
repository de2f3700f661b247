"""Quantized multi-head attention: fp32 ≡ torch.nn, the paper formula bit for bit, int8 integer
kernels ≡ float simulation, and only int8/uint8 tensors reaching the products."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference as ref
from test_int8 import _ProductDtypes  # the product-dtype recorder shared with the conv tests
from wageubn import QSGD, UnsupportedModuleError, WAGEUBNConfig, kernels, quantize_, to_float_
from wageubn.nn import QuantLinear, QuantMultiheadAttention
from wageubn.optim import parameter_roles

EXACT = {"rtol": 0, "atol": 0}
PAPER = WAGEUBNConfig.preset("paper")
FP32 = WAGEUBNConfig.preset("fp32")
INT8 = WAGEUBNConfig.preset("int8")
BACKENDS = [b for b in ("reference", "cpu", "cuda") if b in kernels.available_backends()]


def _mha(seed=0, **kwargs):
    torch.manual_seed(seed)
    return nn.MultiheadAttention(8, 2, **kwargs)


def _inputs(batch_first, seed=1, n=2, tgt=3, src=4, e=8):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, tgt, e, generator=g) if batch_first else torch.randn(tgt, n, e, generator=g)
    kv = torch.randn(n, src, e, generator=g) if batch_first else torch.randn(src, n, e, generator=g)
    return q, kv


def _run(m, q, kv, **kwargs):
    q, kv = q.clone().requires_grad_(), kv.clone().requires_grad_()
    out, w = m(q, kv, kv, **kwargs)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    grads = [p.grad for p in m.parameters()]
    return out.detach(), w, q.grad, kv.grad, grads


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", [False, True])
@pytest.mark.parametrize("kdim", [None, 5])
def test_fp32_equals_torch_bit_for_bit(batch_first, masks, kdim):
    f = _mha(batch_first=batch_first, kdim=kdim, vdim=kdim)
    q = QuantMultiheadAttention.from_float(copy.deepcopy(f), FP32)
    x, kv = _inputs(batch_first, e=8)
    if kdim:
        kv = kv[..., :kdim].contiguous()
    kw = {}
    if masks:
        kw = {"attn_mask": torch.rand(3, 4) > 0.7, "key_padding_mask": torch.tensor(
            [[False, False, True, False], [False, True, False, False]])}  # fmt: skip
    for a, b in zip(_run(f, x, kv, **kw), _run(q, x, kv, **kw), strict=True):
        if isinstance(a, list):
            for u, v in zip(a, b, strict=True):
                torch.testing.assert_close(v, u, **EXACT)
        else:
            torch.testing.assert_close(b, a, **EXACT)


def _ref_attention(m, query, kv, e2_bits=8, int8=False):
    """The data path of docs/quantizers.md "Attention", written from the formulas with the exact
    rational quantizers of tests/reference.py (sequence first input). ``int8``: every product
    operand is A, the projections' inputs too (on the 2^-7 grid while it holds them)."""
    a_q = lambda t: ref._Fwd.apply(t, lambda u: ref.direct(u, 8))  # noqa: E731
    e2 = lambda t: ref._Bwd.apply(t, lambda u: ref.flag(u, e2_bits))  # noqa: E731
    w_q = lambda t: ref._Fwd.apply(t, lambda u: ref.clipped_direct(u, 8))  # noqa: E731
    tgt, n, e = query.shape
    src, h = kv.shape[0], m.num_heads
    d = e // h
    wq, wk, wv = m.in_proj_weight.chunk(3)
    bq, bk, bv = m.in_proj_bias.chunk(3)
    if int8:
        query, kv = a_q(query), a_q(kv)
    q = e2(F.linear(query, w_q(wq), bq)).reshape(tgt, n * h, d).transpose(0, 1)
    k = e2(F.linear(kv, w_q(wk), bk)).reshape(src, n * h, d).transpose(0, 1)
    v = e2(F.linear(kv, w_q(wv), bv)).reshape(src, n * h, d).transpose(0, 1)
    s = e2(torch.bmm(a_q(q), a_q(k).transpose(1, 2))) * (1.0 / math.sqrt(d))
    p = F.softmax(s, dim=-1)
    o = e2(torch.bmm(a_q(p), a_q(v.transpose(1, 2)).transpose(1, 2)))
    o = o.transpose(0, 1).reshape(tgt * n, e)
    o = a_q(o) if int8 else o
    out = e2(F.linear(o, w_q(m.out_proj.weight), m.out_proj.bias)).view(tgt, n, e)
    return out, p.view(n, h, tgt, src).mean(1)


def test_paper_formula_bit_for_bit():
    f = _mha(2)
    q = QuantMultiheadAttention.from_float(copy.deepcopy(f), PAPER)
    x, kv = _inputs(False, 3)
    got = _run(q, x, kv)
    r = copy.deepcopy(f)
    xx, kk = x.clone().requires_grad_(), kv.clone().requires_grad_()
    out, w = _ref_attention(r, xx, kk)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    torch.testing.assert_close(got[0], out.detach(), **EXACT)
    torch.testing.assert_close(got[1], w.detach(), **EXACT)
    torch.testing.assert_close(got[2], xx.grad, **EXACT)
    torch.testing.assert_close(got[3], kk.grad, **EXACT)
    for u, (name, p) in zip(got[4], r.named_parameters(), strict=True):
        torch.testing.assert_close(u, p.grad, **EXACT, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_int8_integer_kernels_equal_float_simulation(backend, batch_first):
    f = _mha(4, batch_first=batch_first)
    x, kv = _inputs(batch_first, 5)
    mask = torch.tensor([[False, True, False, False]] * 2)
    runs = [
        _run(QuantMultiheadAttention.from_float(copy.deepcopy(f), INT8.replace(int8_backend=be)),
             x, kv, key_padding_mask=mask)
        for be in (backend, "float")
    ]  # fmt: skip
    for a, b in zip(*runs, strict=True):
        for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b],
                        strict=True):  # fmt: skip
            torch.testing.assert_close(u, v, **EXACT)


def test_int8_forward_is_the_formula_on_the_fit_grid():
    """Inputs small enough that every fit exponent is the paper's 2^-7 grid: int8 attention then
    computes the paper formula's forward."""
    f = _mha(6)
    with torch.no_grad():
        for p in f.parameters():
            p.mul_(0.3)
    x, kv = (t * 0.2 for t in _inputs(False, 7))
    got, w = QuantMultiheadAttention.from_float(copy.deepcopy(f), INT8)(x, kv, kv)
    out, w_ref = _ref_attention(copy.deepcopy(f), x, kv, int8=True)
    torch.testing.assert_close(got, out, **EXACT)
    torch.testing.assert_close(w, w_ref, **EXACT)


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, idx):
        x = self.embed(idx)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.mlp(self.norm(x))
        x = self.conv(x.transpose(1, 2)).mean(2)
        return self.head(x)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_products_run_on_int8_tensors(backend):
    """A transformer step in int8 (stem and head quantized too): every product, forward and
    backward, attention's included, multiplies int8/uint8 codes."""
    torch.manual_seed(0)
    cfg = INT8.replace(int8_backend=backend, quantize_stem=True, quantize_head=True)
    model = quantize_(TinyTransformer(), cfg)
    idx = torch.randint(0, 11, (3, 5))
    model(idx).sum().backward()  # the cpu backend probes its kernels once, in int64: not here
    with _ProductDtypes() as mode:
        F.cross_entropy(model(idx), torch.tensor([0, 1, 2])).backward()
    assert mode.seen, "no product ops recorded"
    assert all(t in (torch.int8, torch.uint8) for _, d in mode.seen for t in d), mode.seen
    assert model.embed.weight.grad is not None and model.attn.in_proj_weight.grad is not None


def test_paper_mode_attention_products_are_float_for_contrast():
    model = quantize_(TinyTransformer(), "paper")
    with _ProductDtypes() as mode:
        F.cross_entropy(model(torch.randint(0, 11, (2, 4))), torch.tensor([1, 2])).backward()
    assert any(torch.float32 in d for _, d in mode.seen)


def test_quantize_converts_attention_as_a_whole_and_trains():
    model = TinyTransformer()
    params = list(model.parameters())
    quantize_(model, "int8")
    assert type(model.attn) is QuantMultiheadAttention
    assert type(model.attn.out_proj) is QuantLinear
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    roles = parameter_roles(model)
    assert roles["attn.in_proj_weight"] == "weight"
    assert roles["attn.out_proj.weight"] == "weight"
    assert roles["attn.in_proj_bias"] == "float"
    opt = QSGD(model.parameters(), lr=0.25, config="int8")
    before = model.attn.in_proj_weight.detach().clone()
    F.cross_entropy(model(torch.randint(0, 11, (4, 5))), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    assert not torch.equal(before, model.attn.in_proj_weight)
    quantize_(model, "paper")  # re-configure reaches the inner projection
    assert model.attn.out_proj.config == PAPER
    to_float_(model)
    assert type(model.attn) is nn.MultiheadAttention
    assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear


def test_add_bias_kv_is_refused_by_name():
    model = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(UnsupportedModuleError, match="1 is a MultiheadAttention with add_bias_kv"):
        quantize_(model, "paper")
