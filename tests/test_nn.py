"""Quantized layers: each against its formula, and equal to torch.nn with quantization off."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference as ref
from wageubn import WAGEUBNConfig
from wageubn.nn import QuantBatchNorm2d, QuantConv2d, QuantLinear, QuantReLU
from wageubn.optim import parameter_roles
from wageubn.quant import flag_quantize, shift_quantize

EXACT = {"rtol": 0, "atol": 0}
PAPER = WAGEUBNConfig.preset("paper")
FP32 = WAGEUBNConfig.preset("fp32")


@pytest.mark.parametrize("stride,padding,k", [(1, 1, 3), (2, 1, 3), (2, 0, 1), (1, 0, 1)])
def test_quant_conv_forward_backward_formula(stride, padding, k):
    torch.manual_seed(0)
    float_conv = nn.Conv2d(5, 7, k, stride=stride, padding=padding, bias=False)
    conv = QuantConv2d.from_float(copy.deepcopy(float_conv), PAPER)
    x = torch.randn(3, 5, 9, 9, requires_grad=True)
    z = conv(x)
    wq = ref.clipped_direct(float_conv.weight, 8).float()
    torch.testing.assert_close(z, F.conv2d(x, wq, stride=stride, padding=padding), **EXACT)
    g = torch.randn_like(z)
    z.backward(g)
    e2 = ref.flag(g, 8).float()
    dx = torch.nn.grad.conv2d_input(x.shape, wq, e2, stride=stride, padding=padding)
    dw = torch.nn.grad.conv2d_weight(x.detach(), wq.shape, e2, stride=stride, padding=padding)
    torch.testing.assert_close(x.grad, dx, **EXACT)
    torch.testing.assert_close(conv.weight.grad, dw, **EXACT)


def test_quant_linear_forward_backward_formula():
    torch.manual_seed(1)
    lin = QuantLinear(6, 4, config=PAPER)
    x = torch.randn(5, 6, requires_grad=True)
    z = lin(x)
    wq = ref.clipped_direct(lin.weight, 8).float()
    torch.testing.assert_close(z, F.linear(x, wq, lin.bias), **EXACT)
    g = torch.randn_like(z)
    z.backward(g)
    e2 = flag_quantize(g, 8)
    torch.testing.assert_close(x.grad, e2 @ wq, **EXACT)
    torch.testing.assert_close(lin.weight.grad, e2.t() @ x.detach(), **EXACT)
    torch.testing.assert_close(lin.bias.grad, e2.sum(0), **EXACT)


def test_quant_relu_formula():
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    a = QuantReLU(config=PAPER)(x)
    torch.testing.assert_close(a, ref.direct(torch.relu(x), 8).float(), **EXACT)
    g = torch.randn_like(a)
    a.backward(g)
    torch.testing.assert_close(x.grad, shift_quantize(g, 8) * (x > 0), **EXACT)


def test_e2_16_and_int8_e1_clip():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    lin = QuantConv2d(3, 2, 3, padding=1, bias=False, config=PAPER.replace(error2=16))
    z = lin(x)
    g = torch.randn_like(z)
    z.backward(g)
    wq = ref.clipped_direct(lin.weight, 8).float()
    dw = torch.nn.grad.conv2d_weight(x.detach(), wq.shape, ref.flag(g, 16).float(), padding=1)
    torch.testing.assert_close(lin.weight.grad, dw, **EXACT)


def test_bn_training_formula_and_running_stats():
    torch.manual_seed(2)
    bn = QuantBatchNorm2d(6, config=PAPER)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    plain = nn.BatchNorm2d(6)
    x = torch.randn(8, 6, 5, 5) * 3 + 1
    params = {
        "w": bn.weight.detach().clone().requires_grad_(),
        "b": bn.bias.detach().clone().requires_grad_(),
    }
    y = bn(x)
    torch.testing.assert_close(y, ref.ref_bn(x, params["w"], params["b"]), **EXACT)
    plain(x)
    torch.testing.assert_close(bn.running_mean, plain.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bn.running_var, plain.running_var, rtol=1e-6, atol=1e-7)
    assert int(bn.num_batches_tracked) == 1


def test_bn_eval_uses_running_statistics():
    bn = QuantBatchNorm2d(3, config=PAPER).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
    x = torch.randn(2, 3, 4, 4)
    std = ref.direct(torch.sqrt(bn.running_var), 16).float() + 2.0**-15
    mean = ref.direct(bn.running_mean, 16).float()
    xhat = ref.direct((x - mean[:, None, None]) / std[:, None, None], 8).float()
    torch.testing.assert_close(bn(x), xhat, **EXACT)
    before = bn.running_mean.clone()
    bn(x)
    assert torch.equal(before, bn.running_mean)


def test_bn_momentum_none_is_cumulative_average():
    bn = QuantBatchNorm2d(2, momentum=None, config=PAPER)
    plain = nn.BatchNorm2d(2, momentum=None)
    for _ in range(3):
        x = torch.randn(4, 2, 3, 3)
        bn(x)
        plain(x)
    torch.testing.assert_close(bn.running_mean, plain.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bn.running_var, plain.running_var, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("train", [True, False])
def test_fp32_layers_equal_torch_bit_for_bit(train):
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 4),
    )  # fmt: skip
    qnet = copy.deepcopy(net)
    for i, m in enumerate(qnet):
        cls = {nn.Conv2d: QuantConv2d, nn.BatchNorm2d: QuantBatchNorm2d, nn.ReLU: QuantReLU,
               nn.Linear: QuantLinear}.get(type(m))  # fmt: skip
        if cls is not None:
            qnet[i] = cls.from_float(m, FP32)
    net.train(train)
    qnet.train(train)
    x = torch.randn(5, 3, 8, 8)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, qout = net(x1), qnet(x2)
    torch.testing.assert_close(qout, out, **EXACT)
    g = torch.randn_like(out)
    out.backward(g)
    qout.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, **EXACT)
    for (n, p), (_, q) in zip(net.named_parameters(), qnet.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, **EXACT, msg=n)
    for (n, b), (_, c) in zip(net.named_buffers(), qnet.named_buffers(), strict=True):
        torch.testing.assert_close(c, b, **EXACT, msg=n)


def test_from_float_shares_parameters_and_tags_roles():
    conv = nn.Conv2d(2, 3, 3, bias=True)
    q = QuantConv2d.from_float(conv, PAPER)
    assert q.weight is conv.weight and q.bias is conv.bias
    assert parameter_roles(q) == {"weight": "weight", "bias": "float"}
    back = q.to_float()
    assert type(back) is nn.Conv2d and back.weight is conv.weight
    assert parameter_roles(back) == {"weight": "float", "bias": "float"}
    from wageubn import QSGD  # the handed-back weight is float for an optimizer of bare parameters

    opt = QSGD(back.parameters(), lr=0.5, config="fp32")
    assert opt.role_of(back.weight, opt.param_groups[0]) == "float"
    bn = nn.BatchNorm2d(3)
    qbn = QuantBatchNorm2d.from_float(bn, PAPER)
    assert qbn.running_mean is bn.running_mean and parameter_roles(qbn)["weight"] == "bn"
    assert type(qbn.to_float()) is nn.BatchNorm2d


def test_layer_rejects_non_config():
    with pytest.raises(TypeError, match="WAGEUBNConfig"):
        QuantConv2d(2, 3, 3, config="paper")  # type: ignore[arg-type]


def test_nan_gradient_propagates_and_the_step_refuses_it():
    """A NaN reaching E2 is not hidden on the integer grid: it poisons the gradients (no host
    read in backward), and QSGD refuses the step before writing any parameter."""
    from wageubn import QSGD

    conv = QuantConv2d(2, 3, 3, config=PAPER)
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    z = conv(x)
    g = torch.randn_like(z)
    g[0, 0, 0, 0] = float("nan")
    z.backward(g)
    assert bool(torch.isnan(conv.weight.grad).all()) and bool(torch.isnan(x.grad).all())
    opt = QSGD(conv.parameters(), lr=0.5, config=PAPER)
    before = conv.weight.detach().clone()
    with pytest.raises(ValueError, match="not finite, so nothing was updated.*NaN"):
        opt.step()
    assert torch.equal(conv.weight.detach(), before) and not opt.state


@pytest.mark.parametrize(
    "dims,stride,padding,dilation,groups,bias,mode,channels_last",
    [
        (2, 1, 1, 1, 1, False, "zeros", False),
        (2, 2, 1, 1, 1, True, "zeros", True),
        (2, 1, 2, 2, 2, True, "zeros", False),
        (2, 1, 1, 1, 1, False, "reflect", True),
        (2, 2, 0, 1, 6, False, "zeros", True),
        (1, 2, 1, 1, 1, True, "zeros", False),
        (1, 1, 2, 1, 3, False, "circular", False),
    ],
)
def test_paper_conv_rebuilds_the_quantized_weight_in_backward_bit_for_bit(
    dims, stride, padding, dilation, groups, bias, mode, channels_last
):
    """The conv keeps W (a parameter), not a float copy of QC(W); forward and every gradient equal
    the plain autograd product of ``weight_q`` bit for bit."""
    from wageubn.nn import QuantConv1d
    from wageubn.nn.quantizers import error2, weight_q

    torch.manual_seed(3)
    cls, shape = (QuantConv2d, (3, 6, 11, 9)) if dims == 2 else (QuantConv1d, (3, 6, 13))
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    conv = cls(6, 6, 3, padding_mode=mode, config=PAPER, **args)
    twin = copy.deepcopy(conv)
    x = torch.randn(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        z1 = conv(x1)
    z2 = error2(twin._conv_forward(x2, weight_q(twin.weight, PAPER), twin.bias), PAPER)
    torch.testing.assert_close(z1, z2, **EXACT)
    g = torch.randn_like(z1)
    z1.backward(g)
    z2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, **EXACT)
    torch.testing.assert_close(conv.weight.grad, twin.weight.grad, **EXACT)
    if bias:
        torch.testing.assert_close(conv.bias.grad, twin.bias.grad, **EXACT)
    kept = {t.untyped_storage().data_ptr() for t in saved}
    params = {p.untyped_storage().data_ptr() for p in conv.parameters()}
    # the input (or its padded copy) and the parameter itself; never a float copy of QC(W)
    assert not any(t.shape == conv.weight.shape and t.data_ptr() not in params for t in saved)
    assert conv.weight.untyped_storage().data_ptr() in kept


def test_paper_conv_refuses_a_weight_changed_between_forward_and_backward():
    conv = QuantConv2d(3, 4, 3, config=PAPER)
    z = conv(torch.randn(2, 3, 8, 8, requires_grad=True))
    with torch.no_grad():
        conv.weight.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()
