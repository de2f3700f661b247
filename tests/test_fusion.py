"""The speed design's contracts (issue 12): no host reads in a training step, fused kernels equal
to eager ones, ``torch.compile`` of a quantized model, and the BatchNorm edge cases it touched
(a constant channel, a non-finite batch)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import reference as ref
from wageubn import QSGD, WAGEUBNConfig, quantize_
from wageubn.models import create_model
from wageubn.nn import QuantBatchNorm2d
from wageubn.quant.fusion import fusion

EXACT = {"rtol": 0, "atol": 0}

# ops that read a device value on the host (what would stall a GPU)
_SYNCS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.item.default,
}


class _CountSyncs(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SYNCS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _setup(name, preset, batch=4, size=32, channels=3):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=channels)
    cfg = WAGEUBNConfig.preset(preset)
    quantize_(model, cfg)
    opt = QSGD(model.parameters(), lr=0.05, config=cfg, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, size, size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return model, opt, x, y


def _step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("preset", ["paper", "int8"])
def test_a_training_step_reads_the_device_at_most_four_times_whatever_the_depth(preset):
    """Forward, backward and QSGD.step: every scale and exponent stays on the device; the one
    read is QSGD's finite check. Counted by dispatch (the kernels run eagerly under the mode:
    a compiled kernel is one graph and cannot read the host either)."""
    counts = {}
    for name in ("preact_resnet20", "preact_resnet56"):
        with fusion(False):  # what is counted; no compilation needed for it
            model, opt, x, y = _setup(name, preset, batch=2, size=8)
            _step(model, opt, x, y)  # first step: momentum buffers created
            with _CountSyncs() as mode:
                _step(model, opt, x, y)
        counts[name] = mode.count
    assert counts["preact_resnet20"] <= 4, counts
    assert counts["preact_resnet20"] == counts["preact_resnet56"], counts


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("preset", ["paper", "int8"])
def test_compiled_kernels_equal_eager_kernels(preset, layout):
    """One training step with the fused (compiled) kernels and with their eager code: logits,
    every quantized layer's gradient and every updated quantized parameter agree bit for bit.
    The float stem's gradient comes from BN sums accumulated in float64 in another order: it may
    differ in the last float32 bit, no more (docs/WAGEUBN.md §2, reduction order)."""
    results = []
    for fused in (True, False):
        with fusion(fused):
            model, opt, x, y = _setup("small_cnn", preset, batch=6, size=28, channels=1)
            if layout == "channels_last":
                model = model.to(memory_format=torch.channels_last)
            logits = model(x)
            F.cross_entropy(logits, y).backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            opt.step()
            params = {n: p.detach().clone() for n, p in model.named_parameters()}
            results.append((logits.detach(), grads, params))
    (l1, g1, p1), (l2, g2, p2) = results
    torch.testing.assert_close(l1, l2, **EXACT)
    for name in g1:
        tol = {"rtol": 1e-6, "atol": 1e-9} if name.startswith("stem") else EXACT
        torch.testing.assert_close(g1[name], g2[name], **tol, msg=name)
        torch.testing.assert_close(p1[name], p2[name], **tol, msg=name)


def test_torch_compile_fullgraph_of_a_paper_model_equals_eager():
    """``torch.compile(model, fullgraph=True)`` captures forward and backward (no graph break,
    no host read); the logits are equal bit for bit, and so is every gradient behind a
    quantizer. The float stem and classifier may differ by float reduction order only."""
    torch.manual_seed(0)
    model = quantize_(create_model("small_cnn", width=4), "paper")
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, fullgraph=True)
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    out, out_c = model(x), compiled(x)
    torch.testing.assert_close(out_c, out, **EXACT)
    F.cross_entropy(out, y).backward()
    F.cross_entropy(out_c, y).backward()
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        if name.startswith(("stem", "fc")) or name in ("conv2.weight",):
            # float layers (and a float32 product of E2 codes, summed in another order)
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=name)
        else:
            torch.testing.assert_close(q.grad, p.grad, **EXACT, msg=name)


def test_torch_compile_of_an_int8_model_runs_and_equals_eager():
    torch.manual_seed(0)
    model = quantize_(create_model("small_cnn", width=4), "int8")
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, backend="aot_eager")
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    out, out_c = model(x), compiled(x)
    torch.testing.assert_close(out_c, out, **EXACT)
    F.cross_entropy(out, y).backward()
    F.cross_entropy(out_c, y).backward()
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=name)


# -- BatchNorm: a channel constant over the batch (issue 13 item 2) ------------------------------


@pytest.mark.parametrize("preset", ["paper", "paper_e2_16", "int8"])
def test_bn_gradient_is_finite_for_a_constant_channel(preset):
    """σ = 0: the σ-path term of dx is its finite limit 0, so dx = γ_q/σ_q·(dy − mean dy)
    (σ_q = ε there), dβ = Σdy and dγ = Σdy·x̂ as always."""
    cfg = WAGEUBNConfig.preset(preset)
    bn = QuantBatchNorm2d(3, config=cfg)
    x = torch.randn(4, 3, 5, 5)
    x[:, 1] = 0.75  # a constant channel
    x[:, 2] = 0.0  # a dead one
    x.requires_grad_()
    y = bn(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    assert bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(bn.weight.grad).all())
    eps = cfg.bn_eps
    for c in (1, 2):
        g = ref.direct(bn.weight.detach(), 8).float()[c]
        expect = g / eps * (dy[:, c] - dy[:, c].double().mean().float())
        torch.testing.assert_close(x.grad[:, c], expect, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(bn.bias.grad, dy.double().sum((0, 2, 3)).float(), **EXACT)


@pytest.mark.parametrize("preset", ["paper", "int8"])
def test_all_zero_batch_and_batch_one_at_one_by_one_train_finitely(preset):
    """An all-zero image batch and a batch of one 1×1 map (every channel constant): a whole
    training step leaves every parameter finite."""
    torch.manual_seed(0)
    for x in (torch.zeros(4, 3, 16, 16), torch.randn(1, 3, 1, 1)):
        model = quantize_(create_model("preact_resnet20", num_classes=10), preset)
        opt = QSGD(model.parameters(), lr=0.05, config=preset)
        with fusion(False):  # the arithmetic is what is tested; no need to compile new shapes
            _step(model, opt, x, torch.zeros(x.shape[0], dtype=torch.long))
        for name, p in model.named_parameters():
            assert bool(torch.isfinite(p).all()), name


def test_torchvision_mobilenet_v2_first_backward_is_finite():
    """The issue's report: mobilenet_v2 (ReLU6 as ReLU) died on its first backward with NaN."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.mobilenet_v2(num_classes=10)
    for m in list(model.modules()):
        for child_name, child in m.named_children():
            if isinstance(child, torch.nn.ReLU6):
                setattr(m, child_name, torch.nn.ReLU())
    quantize_(model, "paper")
    opt = QSGD(model.parameters(), lr=0.05, config="paper")
    with fusion(False):
        _step(model, opt, torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


# -- a non-finite batch (issue 13 item 3; issue 12: one check per step) ---------------------------


@pytest.mark.parametrize("preset", ["paper", "int8"])
def test_nan_batch_changes_nothing(preset):
    """NaN in the data reaches the loss and the gradients without a host read; the BN running
    statistics skip that batch; QSGD refuses the step before writing any parameter."""
    model, opt, x, y = _setup("small_cnn", preset, batch=4, size=28, channels=1)
    _step(model, opt, x, y)
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    x = x.clone()
    x[0, 0, 3, 3] = float("nan")
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    assert bool(torch.isnan(loss))
    for b, before in zip(model.buffers(), buffers, strict=True):
        assert torch.equal(b, before)
    loss.backward()
    with pytest.raises(ValueError, match="not finite, so nothing was updated"):
        opt.step()
    for p, before in zip(model.parameters(), params, strict=True):
        assert torch.equal(p.detach(), before)
