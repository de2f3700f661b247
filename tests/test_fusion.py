"""The speed design's contracts (issue 12): no host reads in a training step, fused kernels equal
to eager ones, ``torch.compile`` of a quantized model, and the BatchNorm edge cases it touched
(a constant channel, a non-finite batch)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import reference as ref
from wageubn import QSGD, WAGEUBNConfig, quantize_
from wageubn.models import create_model
from wageubn.nn import QuantBatchNorm2d
from wageubn.profile.syncs import HostSyncs
from wageubn.quant.fusion import fusion

EXACT = {"rtol": 0, "atol": 0}


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
            with HostSyncs() as mode:
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


# -- the direct replay of a compiled kernel (quant/replay.py, ``Record.replay``) ----------------


def _kernel_entries(kernel):
    return list(kernel._seen.values())


def test_a_repeated_call_replays_the_compiled_graph_and_equals_eager():
    from wageubn.quant.fusion import fused

    @fused
    def kernel(x, y, scale: float, keep: bool):
        amax = x.abs().amax()
        out = torch.round(x * scale) + y * amax
        return (out, amax, y, None) if keep else out

    g = torch.Generator().manual_seed(0)
    for keep in (True, False):
        for shape in ((5, 7), (5, 7), (3, 2, 4), (3, 2, 4)):
            x, y = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
            with fusion(True):
                got = kernel(x, y, 4.0, keep)
            want = kernel.eager(x, y, 4.0, keep)
            got, want = (got, want) if keep else ((got,), (want,))
            assert len(got) == len(want)
            for a, b in zip(got, want, strict=True):
                assert (a is None) == (b is None)
                if a is not None:
                    torch.testing.assert_close(a, b, **EXACT)
            if keep:
                assert got[2] is y  # an input returned as itself stays itself
    if not torch._dynamo.is_dynamo_supported():  # pragma: no cover
        pytest.skip("torch.compile is not supported here")
    entries = _kernel_entries(kernel)
    assert entries and all(replay is not None for _, _, replay in entries)


def test_replay_keys_on_aliasing_strides_and_in_place_updates():
    """The same tensor passed twice, then two distinct ones of the same shape; a transposed
    input; an in-place update of an input: each equals the eager kernel."""
    from wageubn.quant.fusion import fused

    @fused
    def kernel(a, b, acc):
        acc.copy_(acc * 0.5 + a - b)
        return a * 2 + b

    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g)
    for a, b in [
        (x, x),
        (x, x),
        (x, torch.randn(6, 4, generator=g)),
        (x.t().t(), x.t().contiguous().t()),
    ]:
        for _ in range(2):
            acc, acc_eager = torch.ones(6, 4), torch.ones(6, 4)
            with fusion(True):
                out = kernel(a, b, acc)
            want = kernel.eager(a, b, acc_eager)
            torch.testing.assert_close(out, want, **EXACT)
            torch.testing.assert_close(acc, acc_eager, **EXACT)
    keys = list(kernel._seen)
    assert len({k[-1][0] for k in keys}) == 2  # aliased and distinct arguments: two entries
