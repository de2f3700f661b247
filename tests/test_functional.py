"""Functional calls in forward: activations quantized through the torch.fx rewrite (the same values
as the module form), everything that stays float listed, direct weight reads refused."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wageubn import UnsupportedModuleError, WAGEUBNConfig, quantize_, to_float_
from wageubn.convert import float_calls
from wageubn.nn import QuantGELU, QuantReLU

EXACT = {"rtol": 0, "atol": 0}


class Functional(nn.Module):
    """Activations called as functions (F., torch., Tensor methods), a residual sum, a matmul."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        h = F.relu(self.bn(self.conv1(x)))
        h = h + F.gelu(self.conv2(h), approximate="tanh")
        h = F.leaky_relu(h, 0.25).mean((2, 3))
        h = torch.sigmoid(self.fc(h)) * self.fc(h).tanh()
        return self.head(F.silu(h) + F.hardswish(h))


class Modules(nn.Module):
    """The same network written with activation modules."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 4)
        self.relu, self.gelu = nn.ReLU(), nn.GELU(approximate="tanh")
        self.leaky, self.sigmoid, self.tanh = nn.LeakyReLU(0.25), nn.Sigmoid(), nn.Tanh()
        self.silu, self.hardswish = nn.SiLU(), nn.Hardswish()

    def forward(self, x):
        h = self.relu(self.bn(self.conv1(x)))
        h = h + self.gelu(self.conv2(h))
        h = self.leaky(h).mean((2, 3))
        h = self.sigmoid(self.fc(h)) * self.tanh(self.fc(h))
        return self.head(self.silu(h) + self.hardswish(h))


def _step(model, x):
    x = x.clone().requires_grad_()
    y = model(x)
    y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
    return [y.detach(), x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("preset", ["paper", "int8"])
def test_functional_activations_equal_the_module_form(preset):
    torch.manual_seed(0)
    fn = Functional()
    mods = Modules()
    mods.load_state_dict(fn.state_dict())
    keys = list(fn.state_dict())
    quantize_(fn, preset)
    quantize_(mods, preset)
    added = [m for n, m in fn.named_modules() if n.startswith("_wageubn_fn")]
    assert len(added) == 7 and sum(isinstance(m, QuantReLU) for m in added) == 1
    assert any(isinstance(m, QuantGELU) and m.approximate == "tanh" for m in added)
    assert list(fn.state_dict()) == keys  # nothing with state was added
    assert fn.bn.fused_relu is not None  # BN + the functional ReLU fused, as with a module
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    for a, b in zip(_step(fn, x), _step(mods, x), strict=True):
        torch.testing.assert_close(a, b, **EXACT)
    kinds = {(c.call, c.kind) for c in float_calls(fn)}
    assert ("operator.add", "sum") in kinds and ("operator.mul", "elementwise product") in kinds
    assert all(c.kind != "activation" for c in float_calls(fn))


def test_fp32_rewrite_is_torch_bit_for_bit_and_to_float_restores():
    torch.manual_seed(2)
    ref = Functional()
    q = quantize_(copy.deepcopy(ref), "fp32")
    x = torch.randn(2, 3, 5, 5)
    for a, b in zip(_step(ref, x), _step(q, x), strict=True):
        torch.testing.assert_close(b, a, **EXACT)
    clone = copy.deepcopy(q)  # the rewritten forward is carried by deepcopy
    torch.testing.assert_close(clone(x), q(x), **EXACT)
    to_float_(q)
    assert "forward" not in q.__dict__ and not any("_wageubn_fn" in n for n, _ in q.named_modules())
    torch.testing.assert_close(q(x), ref(x), **EXACT)


class TrainEval(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.fc(x))
        if self.training:
            h = F.dropout(h, 0.5, training=True) * 0.0 + h  # a branch only in training
        return self.out(torch.sigmoid(h))


def test_training_dependent_code_keeps_both_graphs_and_shares_modules():
    m = quantize_(TrainEval(), "paper")
    added = [n for n, _ in m.named_modules() if n.startswith("_wageubn_fn")]
    assert added == ["_wageubn_fn0", "_wageubn_fn1"]  # eval reuses train's modules
    x = torch.randn(3, 4)
    train_out = m(x)
    m.eval()
    torch.testing.assert_close(m(x), train_out, **EXACT)


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = self.fc(x)
        F.relu(h, inplace=True)  # result unused: only the in-place side effect counts
        g = self.fc(x)
        r = F.relu(g, inplace=True)  # result used, input not read again: rewritten
        return self.out(h + r)


def test_inplace_side_effect_is_left_and_listed():
    m = quantize_(InPlace(), "paper")
    added = [n for n, _ in m.named_modules() if n.startswith("_wageubn_fn")]
    assert len(added) == 1
    rows = [c for c in float_calls(m) if c.kind == "activation"]
    assert len(rows) == 1 and "in place" in rows[0].note and rows[0].call.endswith("relu")


class ReadsWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(F.linear(x, self.proj.weight, self.proj.bias))


def test_direct_weight_read_of_a_quantized_layer_is_refused():
    m = ReadsWeight()
    with pytest.raises(UnsupportedModuleError, match="reads proj.weight directly.*calling proj"):
        quantize_(m, "paper")
    assert type(m.proj) is nn.Linear  # nothing changed
    quantize_(m, "paper", filter_fn=lambda mod, fqn: fqn != "proj")  # excluding it works
    assert any(c.kind == "product" and "linear" in c.call for c in float_calls(m))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = F.relu(x)
        return self.fc(x)


def test_untraceable_module_is_listed_and_left_as_is():
    m = nn.Sequential(nn.Linear(4, 4), Untraceable())
    quantize_(m, WAGEUBNConfig.preset("paper").replace(quantize_head=True))
    rows = [c for c in float_calls(m) if c.kind == "untraced"]
    assert [r.module for r in rows] == ["1"] and "torch.fx cannot trace" in rows[0].note
    assert m[1](torch.ones(1, 4)).shape == (1, 2)


def test_functional_false_lists_the_activations_instead():
    m = quantize_(Functional(), "paper", functional=False)
    assert not any(n.startswith("_wageubn_fn") for n, _ in m.named_modules())
    acts = [c for c in float_calls(m) if c.kind == "activation"]
    assert len(acts) == 7 and all("functional=False" in c.note for c in acts)


def test_float_calls_needs_a_converted_model():
    with pytest.raises(ValueError, match="not converted by quantize_"):
        float_calls(nn.Linear(2, 2))


def test_diagnostics_observe_the_new_layers():
    """The quantization diagnostics see the new layers' quantizers (A/E1 of a functional GELU,
    the BN roles of a LayerNorm, A and E2 inside attention)."""
    from wageubn.diagnostics import Diagnostics

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 8)
            self.norm = nn.LayerNorm(8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            h = self.norm(F.gelu(self.fc(x)))
            return self.head(self.attn(h, h, h)[0])

    model = quantize_(Net(), "paper")
    diag = Diagnostics(model, every=1)
    with diag.step(0):
        model(torch.randn(2, 3, 4)).sum().backward()
    seen = {(r["layer"], r["role"]) for r in diag.rows}
    assert {("_wageubn_fn0", "A"), ("_wageubn_fn0", "E1")} <= seen
    assert {("norm", "bn_mean"), ("norm", "bn_xhat"), ("norm", "bn_gamma")} <= seen
    assert {("attn", "A"), ("attn", "E2"), ("attn", "W")} <= seen
