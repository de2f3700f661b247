"""``int8`` arithmetic: codes of every operand, integer kernels ≡ float simulation, int8 tensors
reaching the products, int8 saved activations."""

from __future__ import annotations

import copy

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import reference as ref
from wageubn import QSGD, WAGEUBNConfig, kernels, quantize_
from wageubn.models import create_model
from wageubn.nn import QuantConv2d, QuantLinear
from wageubn.nn.int8 import activation_codes, error2_planes, weight_codes
from wageubn.quant import direct_quantize, fit_exponent, fit_quantize, flag_quantize

EXACT = {"rtol": 0, "atol": 0}
INT8 = WAGEUBNConfig.preset("int8")
BACKENDS = [b for b in ("reference", "cpu", "cuda") if b in kernels.available_backends()]


def _planes_value(planes, bits):
    coarse, fine, e = planes
    return coarse.double() * 2.0**e + fine.double() * 2.0 ** (e - bits + 1)


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=7),
               elements=st.floats(-1e4, 1e4, width=32)),
    st.sampled_from([2, 4, 8]),
)  # fmt: skip
def test_error2_planes_are_flag_quantize(a, bits):
    g = torch.from_numpy(a)
    planes = error2_planes(g, bits)
    if planes is None:
        assert not g.any()
        return
    coarse, fine, _ = planes
    assert coarse.dtype == fine.dtype == torch.int8
    top = 2 ** (bits - 1) - 1
    assert int(coarse.abs().max()) <= top and int(fine.abs().max()) <= top
    assert not bool(((coarse != 0) & (fine != 0)).any())  # each element in exactly one plane
    # the planes hold the exact value; FQ in float32 is that value rounded once (subnormals)
    torch.testing.assert_close(_planes_value(planes, bits).float(), flag_quantize(g, bits), **EXACT)


def test_error2_promotes_fine_code_128():
    g = torch.tensor([1.0, 0.999])  # R = 1, s = 1/128: 0.999·128 = 127.9 → y < 1 fine code 128
    g = torch.tensor([1.0, 1.0 / 128 * 0.999])
    coarse, fine, e = error2_planes(g, 8)
    assert e == -7 and fine.tolist() == [0, 0] and coarse.tolist() == [127, 1]
    torch.testing.assert_close(
        _planes_value((coarse, fine, e), 8), flag_quantize(g, 8).double(), **EXACT
    )


@pytest.mark.parametrize("scale", [1e-3, 0.3, 0.99, 1.0, 3.7, 200.0])
def test_fit_quantize(scale):
    x = torch.relu(torch.randn(500, generator=torch.Generator().manual_seed(1))) * scale
    e = fit_exponent(x, 8)
    y = fit_quantize(x, 8)
    codes = y.double() * 2.0**-e
    assert torch.equal(codes, torch.round(codes)) and float(codes.max()) <= 127
    assert e >= -7 and (e == -7 or float(x.max()) > 127 * 2.0 ** (e - 1))
    if float(x.max()) <= 127 / 128:
        torch.testing.assert_close(y, direct_quantize(x, 8), **EXACT)  # the paper grid
    expect = torch.tensor([float(ref.q(v / ref.F(2) ** e, 1)) for v in ref._values(x)]) * 2.0**e
    torch.testing.assert_close(y.double(), expect.double(), **EXACT)
    assert torch.equal(fit_quantize(y, 8), y)  # idempotent
    codes8, e8 = activation_codes(x, 8)
    assert codes8.dtype == torch.int8 and e8 == e
    torch.testing.assert_close(codes8.double() * 2.0**e, y.double(), **EXACT)


def test_weight_codes():
    w = torch.randn(4, 3, 3, 3) * 0.5
    codes, e = weight_codes(w, 8)
    assert codes.dtype == torch.int8 and e == -7 and int(codes.abs().max()) <= 127
    torch.testing.assert_close(codes.double() * 2.0**-7, ref.clipped_direct(w, 8), **EXACT)


def _conv_step(backend, geom=(2, 1), x_scale=1.0, cin=3):
    torch.manual_seed(0)
    stride, padding = geom
    conv = QuantConv2d(cin, 5, 3, stride=stride, padding=padding, bias=True,
                       config=INT8.replace(int8_backend=backend))  # fmt: skip
    x = (torch.randn(2, cin, 7, 7) * x_scale).requires_grad_()
    z = conv(x)
    g = torch.randn(z.shape)  # logical order: z may be channels_last on the cpu backend
    z.backward(g)
    return z.detach(), x.grad, conv.weight.grad, conv.bias.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geom", [(1, 1), (2, 1), (1, 0)])
@pytest.mark.parametrize("x_scale", [0.5, 30.0])
def test_conv_integer_kernels_equal_float_simulation(backend, geom, x_scale):
    """Small layers: every partial sum is below 2^24 in units of the finest grid, so float32 is
    exact and the float simulation must agree bit for bit with the integer kernels."""
    a = _conv_step(backend, geom, x_scale)
    b = _conv_step("float", geom, x_scale)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u.contiguous(), v.contiguous(), **EXACT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_integer_kernels_equal_float_simulation(backend):
    out = []
    for be in (backend, "float"):
        torch.manual_seed(0)
        lin = QuantLinear(9, 4, config=INT8.replace(int8_backend=be))
        x = torch.randn(3, 2, 9, requires_grad=True)
        z = lin(x)
        z.backward(torch.randn_like(z))
        out.append((z.detach(), x.grad, lin.weight.grad, lin.bias.grad))
    for u, v in zip(*out, strict=True):
        torch.testing.assert_close(u, v, **EXACT)


def test_int8_forward_is_the_paper_formula_on_the_int8_grid():
    torch.manual_seed(0)
    conv = QuantConv2d(3, 4, 3, padding=1, bias=False, config=INT8)
    x = torch.rand(2, 3, 6, 6) * 0.99  # max < 127/128: A is the paper's Q(x, 8)
    z = conv(x)
    expect = F.conv2d(direct_quantize(x, 8), ref.clipped_direct(conv.weight, 8).float(), padding=1)
    torch.testing.assert_close(z.contiguous(), expect, **EXACT)


def _small_step(backend, steps=2):
    torch.manual_seed(0)
    cfg = INT8.replace(int8_backend=backend, quantize_stem=True, quantize_head=True)
    model = quantize_(create_model("small_cnn", width=4), cfg)
    opt = QSGD(model.parameters(), lr=0.05, config=cfg, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(4, 1, 12, 12, generator=g), torch.randint(0, 10, (4,), generator=g)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return model, loss


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_step_integer_equals_float_simulation(backend):
    m1, l1 = _small_step(backend)
    m2, l2 = _small_step("float")
    torch.testing.assert_close(l1, l2, **EXACT)
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, **EXACT, msg=n)


class _ProductDtypes(TorchDispatchMode):
    """Records the input dtypes of every matmul/convolution op that runs (also used by
    tests/test_attention.py)."""

    PRODUCTS = ("convolution", "mm", "addmm", "bmm", "baddbmm", "matmul", "_int_mm", "qconv",
                "qlinear", "linear", "_scaled_dot_product", "einsum")  # fmt: skip

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if any(p == name or name.startswith(p) for p in self.PRODUCTS):
            operands = args
            if str(func) == "onednn.qconv2d_pointwise.binary":
                # argument 6 is the sum post-op's addend (the other E2 plane's float32 output,
                # already scaled); it is added to the product, never multiplied
                operands = args[:6] + args[7:]
            dtypes = tuple(a.dtype for a in operands if isinstance(a, torch.Tensor) and a.dim() > 1)
            self.seen.append((str(func), dtypes))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", BACKENDS)
def test_products_run_on_int8_tensors(backend):
    """With everything quantized (stem and head too), no float matmul/conv runs in a training step."""
    torch.manual_seed(0)
    cfg = INT8.replace(int8_backend=backend, quantize_stem=True, quantize_head=True)
    model = quantize_(create_model("small_cnn", width=4), cfg)
    x, y = torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))
    with _ProductDtypes() as mode:
        F.cross_entropy(model(x), y).backward()
    assert mode.seen, "no product ops recorded"
    float_products = [(f, d) for f, d in mode.seen if any(t.is_floating_point for t in d)]
    assert not float_products, float_products
    if backend == "reference":  # the oracle widens to int64 before multiplying
        assert all(not t.is_floating_point for _, d in mode.seen for t in d)
    else:  # the fast kernels multiply int8/uint8 codes
        assert all(t in (torch.int8, torch.uint8) for _, d in mode.seen for t in d), mode.seen


def test_paper_mode_products_are_float_for_contrast():
    model = quantize_(create_model("small_cnn", width=4), "paper")
    with _ProductDtypes() as mode:
        F.cross_entropy(model(torch.randn(2, 1, 12, 12)), torch.tensor([1, 2])).backward()
    assert any(torch.float32 in d for _, d in mode.seen)


def test_saved_activations_are_int8_codes():
    conv = QuantConv2d(4, 4, 3, padding=1, bias=False, config=INT8)
    x = torch.relu(torch.randn(2, 4, 8, 8)).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        conv(x)
    # the activation's int8 codes, and the weight parameter itself (its codes are rebuilt)
    kept = [t for t in saved if t.untyped_storage().data_ptr() != conv.weight.data_ptr()]
    assert len(kept) == len(saved) - 1
    assert kept and all(t.dtype in (torch.int8, torch.uint8) for t in kept)
    assert sum(t.numel() * t.element_size() for t in kept) <= x.numel()


def test_int8_rejects_unsupported_padding_mode():
    conv = QuantConv2d(2, 2, 3, padding=1, padding_mode="reflect", config=INT8)
    with pytest.raises(NotImplementedError, match="padding_mode"):
        conv(torch.randn(1, 2, 5, 5))


def test_int8_backend_is_validated():
    with pytest.raises(ValueError, match="did you mean 'float'"):
        INT8.replace(int8_backend="flaot")


def test_int8_config_copies_are_independent():
    m = quantize_(create_model("small_cnn", width=4), INT8)
    m2 = copy.deepcopy(m)
    assert m2.conv1.config == INT8


# -- int8 BatchNorm and ReLU: single autograd functions that save integers ---------------------

from wageubn.nn import QuantBatchNorm2d, QuantReLU  # noqa: E402
from wageubn.nn.fused import pack_mask, unpack_mask  # noqa: E402
from wageubn.quant import shift_quantize  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=70))
def test_pack_mask_round_trip(bits):
    mask = torch.tensor(bits)
    padded = torch.nn.functional.pad(mask, (0, (-len(bits)) % 8))  # the ReLU pads to 8
    packed = pack_mask(padded)
    assert packed.dtype == torch.uint8 and packed.numel() == (len(bits) + 7) // 8
    assert torch.equal(unpack_mask(packed, len(bits)), mask)


def _bn_pair(config_int8, config_paper, train=True, seed=0):
    torch.manual_seed(seed)
    a = QuantBatchNorm2d(5, config=config_int8)
    b = QuantBatchNorm2d(5, config=config_paper)
    with torch.no_grad():
        for m in (a, b):
            m.weight.copy_(torch.linspace(0.5, 1.5, 5))
            m.bias.copy_(torch.linspace(-0.25, 0.25, 5))
    a.train(train)
    b.train(train)
    return a, b


@pytest.mark.parametrize("train", [True, False])
def test_int8_bn_forward_equals_paper_formula(train):
    a, b = _bn_pair(INT8, WAGEUBNConfig.preset("paper"), train)
    x = torch.randn(4, 5, 6, 6) * 2 + 0.5
    torch.testing.assert_close(a(x), b(x), **EXACT)
    torch.testing.assert_close(a.running_mean, b.running_mean, **EXACT)
    torch.testing.assert_close(a.running_var, b.running_var, **EXACT)


def test_int8_bn_backward_is_the_exact_derivative_without_rounding():
    """With x̂ kept in float (no x̂ rounding) the closed-form backward is the true derivative of
    the BN formula: it must equal float64 autograd through the same formula."""
    cfg = INT8.replace(bn_xhat=None, bn_mean=None, bn_std=None, bn_beta=None, bn_gamma=24)
    bn = QuantBatchNorm2d(3, config=cfg).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
    x = (torch.randn(4, 3, 5, 5, dtype=torch.float64) * 3 + 1).requires_grad_()
    g = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    bn(x).backward(g)
    x2 = x.detach().clone().requires_grad_()
    gamma = bn.weight.detach().clone().requires_grad_()
    beta = bn.bias.detach().clone().requires_grad_()
    mean = x2.mean((0, 2, 3))
    std = torch.sqrt(x2.var((0, 2, 3), unbiased=False)) + 2.0**-15
    y = (x2 - mean[:, None, None]) / std[:, None, None] * gamma[:, None, None] + beta[:, None, None]
    y.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(bn.weight.grad, gamma.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(bn.bias.grad, beta.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("train", [True, False])
def test_int8_bn_backward_close_to_paper_autograd(train):
    """With x̂ rounded to 8 bits the backward uses x̂_q for the unrounded x̂: a bounded change."""
    a, b = _bn_pair(INT8, WAGEUBNConfig.preset("paper"), train)
    x = torch.randn(8, 5, 6, 6) * 2 + 0.5
    g = torch.randn(8, 5, 6, 6)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a(xa).backward(g)
    b(xb).backward(g)
    rel = (xa.grad - xb.grad).norm() / xb.grad.norm()
    assert rel < 0.02, rel
    torch.testing.assert_close(a.bias.grad, b.bias.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=1e-5, atol=1e-5)


def test_int8_relu_forward_backward():
    x = torch.randn(3, 4, 5, 5) * 2
    x.requires_grad_()
    a = QuantReLU(config=INT8)(x)
    torch.testing.assert_close(a, fit_quantize(torch.relu(x.detach()), 8), **EXACT)
    g = torch.randn_like(a)
    a.backward(g)
    torch.testing.assert_close(x.grad, shift_quantize(g, 8, narrow_range=True) * (x > 0), **EXACT)


def test_int8_unit_saves_little_for_backward():
    """BN (int16 x̂) + ReLU (packed mask) + conv (int8 codes): well under float32's 8 bytes."""
    torch.manual_seed(0)
    bn, relu = QuantBatchNorm2d(8, config=INT8), QuantReLU(config=INT8)
    conv = QuantConv2d(8, 8, 3, padding=1, bias=False, config=INT8)
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    saved: dict[int, int] = {}
    params = {p.data_ptr() for m in (bn, conv) for p in m.parameters()}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if t.numel() > 64 and ptr not in params:  # skip per-channel statistics and parameters
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        conv(relu(bn(x)))
    per_element = sum(saved.values()) / x.numel()
    assert per_element <= 3.2, per_element


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_conv_integer_equals_float(backend):
    out = []
    for be in (backend, "float"):
        torch.manual_seed(0)
        conv = QuantConv2d(
            4, 6, 3, padding=1, groups=2, bias=False, config=INT8.replace(int8_backend=be)
        )
        x = torch.randn(2, 4, 6, 6, requires_grad=True)
        z = conv(x)
        z.backward(torch.randn(z.shape, generator=torch.Generator().manual_seed(1)))
        out.append((z.detach().contiguous(), x.grad.contiguous(), conv.weight.grad))
    for u, v in zip(*out, strict=True):
        torch.testing.assert_close(u, v, **EXACT)


@pytest.mark.parametrize("channels", [4, 130])
def test_input_gradient_fast_and_exact_paths_agree(channels):
    """K·127·max|code| < 2^24 takes the fused float32 path, larger K the float64 combination:
    both must equal the exact integer result rounded once (computed here from int64 oracles)."""
    from wageubn.nn.int8 import _IntegerProducts, planes_of

    torch.manual_seed(0)
    w = torch.randint(-127, 128, (channels, 3, 3, 3), dtype=torch.int8)
    g = torch.randn(2, channels, 5, 5)
    planes = planes_of(g, 8)
    got = _IntegerProducts("reference").conv_input(planes, w, -7, (2, 3, 5, 5), (1, 1, 1, 1), 8)
    coarse, fine, e = error2_planes(g, 8)
    acc = [kernels.conv2d_input_grad(p, w, (2, 3, 5, 5), 1, 1, backend="reference").long()
           for p in (coarse, fine)]  # fmt: skip
    exact = ((acc[0] * 128 + acc[1]).double() * 2.0 ** (e - 7 - 7)).float()
    torch.testing.assert_close(got.contiguous(), exact, **EXACT)
