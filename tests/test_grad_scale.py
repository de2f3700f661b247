"""``grad_scale="channel"``: CQ with one R(g) per output channel (opt-in, beyond the paper).

The contract: ``CQ_channel(g)[i] = CQ(g[i], k, dr)`` for every slice ``i`` along dim 0, with the
draws of ``torch.rand(g.shape, generator)`` element for element; tensors of fewer than 2 dims keep
one R. Checked against the exact-rational oracle, across layouts, through ``QSGD``'s fused update
and its per-parameter path, and by what it is for: a channel whose gradients are small next to
another channel's no longer rounds to zero.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from wageubn import QSGD, WAGEUBNConfig, quantize_
from wageubn.quant import constant_quantize, device


def _draws(x: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def _oracle(x: torch.Tensor, bits: int, dr: int, u: torch.Tensor) -> torch.Tensor:
    """Per slice, the per-tensor oracle with that slice's draws."""
    return torch.stack([ref.constant(x[i], bits, dr, u[i]) for i in range(x.shape[0])])


def _exact(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.equal(a.double(), b.double()), (a - b.to(a.dtype)).abs().max()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dr", [2, 128])
def test_channel_cq_matches_the_oracle_slice_by_slice(bits, dr):
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 1e-3, 3e-6, 250.0]).view(4, 1, 1, 1)
    x = torch.randn(4, 3, 3, 3, generator=g) * scales
    x[2, 0, 0, 0] = 0.0
    out = constant_quantize(
        x, bits, dr, generator=torch.Generator().manual_seed(7), scale="channel"
    )
    _exact(out, _oracle(x, bits, dr, _draws(x, 7)))


def test_channel_cq_nearest_rounding_and_all_zero_channel():
    x = torch.tensor([[0.5, -0.25, 0.125], [0.0, 0.0, 0.0], [3e-5, -1e-5, 2e-5]])
    out = constant_quantize(x, 8, 8, rounding="nearest", scale="channel")
    # nearest = the oracle with draws 0.5 (floor + [0.5 < frac] rounds ties down; none here)
    for i in range(3):
        r = constant_quantize(x[i], 8, 8, rounding="nearest")
        _exact(out[i], r)
    assert torch.count_nonzero(out[1]) == 0
    assert torch.count_nonzero(out[2]) == 3  # per tensor its values would all round to 0
    assert torch.count_nonzero(constant_quantize(x, 8, 8, rounding="nearest")[2]) == 0


def test_channel_cq_is_layout_independent_and_keeps_the_layout():
    x = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    cl = x.contiguous(memory_format=torch.channels_last)
    a = device.q_constant(x, 8, 32, generator=torch.Generator().manual_seed(3), scale="channel")
    b = device.q_constant(cl, 8, 32, generator=torch.Generator().manual_seed(3), scale="channel")
    _exact(a, b)
    assert b.is_contiguous(memory_format=torch.channels_last)


def test_channel_scale_of_a_vector_is_the_tensor_scale():
    x = torch.randn(33, generator=torch.Generator().manual_seed(2))
    a = constant_quantize(x, 8, 128, generator=torch.Generator().manual_seed(4), scale="channel")
    b = constant_quantize(x, 8, 128, generator=torch.Generator().manual_seed(4))
    _exact(a, b)


def test_a_non_finite_channel_poisons_only_itself_on_the_device_path():
    x = torch.ones(3, 4)
    x[1, 2] = float("nan")
    out = device.q_constant(x, 8, 128, generator=torch.Generator().manual_seed(0), scale="channel")
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2]]).all()
    with pytest.raises(ValueError, match="NaN"):
        constant_quantize(x, 8, 128, scale="channel")


def test_bad_scale_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="'tensor' or 'channel'"):
        constant_quantize(torch.ones(2, 2), 8, 128, scale="row")
    with pytest.raises(ValueError, match="grad_scale='chanel'.*channel"):
        WAGEUBNConfig.preset("paper").replace(grad_scale="chanel")


def test_presets_keep_the_papers_tensor_scale():
    for name in ("paper", "paper_e2_16", "int8"):
        assert WAGEUBNConfig.preset(name).grad_scale == "tensor"


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 9),
    logscale=st.lists(st.floats(-20, 10), min_size=6, max_size=6),
    seed=st.integers(0, 2**16),
    dr=st.sampled_from([2, 8, 128]),
)
def test_channel_cq_properties(rows, cols, logscale, seed, dr):
    """Every channel lands on the fixed grid within ±(dr−1) steps, and equals CQ of that channel
    alone with its own draws."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.tensor(logscale[:rows]).exp2().view(-1, 1)
    out = constant_quantize(
        x, 8, dr, generator=torch.Generator().manual_seed(seed), scale="channel"
    )
    steps = out * 2.0**14
    assert torch.equal(steps, steps.round()) and steps.abs().max() <= dr - 1
    u = _draws(x, seed)
    _exact(out, _oracle(x, 8, dr, u))


def _step(model_seed: int, cfg: WAGEUBNConfig, per_param: bool, steps: int = 2):
    torch.manual_seed(model_seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 6, 3, padding=1, groups=6),
        torch.nn.Flatten(),
        torch.nn.Linear(6 * 8 * 8, 4),
    )
    quantize_(model, cfg.replace(quantize_stem=True, quantize_head=True))
    opt = QSGD.from_model(model, lr=0.125, generator=torch.Generator().manual_seed(5))
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    if per_param:  # the per-parameter path: what the fused kernel must equal
        opt._fusable = lambda role: False  # type: ignore[method-assign]
    for _ in range(steps):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_qsgd_channel_scale_changes_only_the_weight_updates():
    """One step from the same state: the channel scale's update differs from the paper's on
    weights and equals it on BN (``Q(g, k_GBN)`` has no R)."""
    cfg = WAGEUBNConfig.preset("paper").replace(grad_scale="channel")
    channel = _step(0, cfg, per_param=False, steps=1)
    tensor = _step(0, WAGEUBNConfig.preset("paper"), per_param=True, steps=1)
    # parameters: conv, its bias, BN gamma, beta, depthwise conv, its bias, linear, its bias
    assert any(not torch.equal(channel[i], tensor[i]) for i in (0, 4, 6))
    _exact(channel[2], tensor[2])  # BN: the same Q(g, k_GBN) update
    _exact(channel[3], tensor[3])


def test_qsgd_applies_channel_cq_to_weight_gradients():
    """One step from a fresh buffer: ``p_new = Q(p − lr_q·CQ_channel(g), k_U)``."""
    cfg = WAGEUBNConfig.preset("paper").replace(grad_scale="channel")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, groups=4, bias=False)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), conv)
    quantize_(model, cfg.replace(quantize_stem=True, quantize_head=True))
    w = model[1].weight
    before = w.detach().clone()
    opt = QSGD([w], lr=0.125, momentum=0, weight_decay=0, config=cfg.replace(quantize_stem=True, quantize_head=True),
               generator=torch.Generator().manual_seed(11))  # fmt: skip
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    (model(x) * torch.tensor([1.0, 1e-2, 1e-3, 4.0]).view(1, 4, 1, 1)).sum().backward()
    g = w.grad.detach().clone()
    opt.step()
    gq = device.q_constant(g, 8, 128, generator=torch.Generator().manual_seed(11), scale="channel")
    expected = device.q_direct(before - 0.125 * gq, cfg.update)
    _exact(w.detach(), expected)
    assert all(torch.count_nonzero(w.detach()[i] - before[i]) > 0 for i in range(4))


def test_qsgd_warns_about_weight_decay_with_the_channel_scale():
    """Weight decay under per-channel CQ drives small-gradient channels to 0 at full steps
    (docs/quantizers.md): QSGD says so once at construction; without decay, or with the paper's
    per-tensor scale, it is silent."""
    import warnings

    cfg = WAGEUBNConfig.preset("paper").replace(grad_scale="channel")
    conv = torch.nn.Conv2d(4, 4, 3, groups=4, bias=False)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), conv)
    quantize_(model, cfg)
    with pytest.warns(
        RuntimeWarning, match="weight decay with grad_scale='channel'.*weight_decay=0"
    ):
        QSGD(model.parameters(), lr=0.125, weight_decay=1e-4, config=cfg)
    paper = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.Conv2d(4, 4, 3, groups=4))
    quantize_(paper, "paper")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        QSGD(model.parameters(), lr=0.125, weight_decay=0, config=cfg)
        QSGD(paper.parameters(), lr=0.125, weight_decay=1e-4)
