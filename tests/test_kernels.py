"""wageubn.kernels: every backend bit-exact against the int64 reference (docs/kernels.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wageubn import kernels
from wageubn.kernels import cpu, cuda, reference

CL = torch.channels_last


def codes(shape, dtype, gen, kind="random"):
    """Codes of ``dtype``: random over the full range, or one extreme value everywhere."""
    lo, hi = (0, 256) if dtype == torch.uint8 else (-128, 128)
    if kind == "random":
        return torch.randint(lo, hi, shape, dtype=dtype, generator=gen)
    value = {"max": hi - 1, "min": lo, "neg127": -127}[kind]
    return torch.full(shape, value, dtype=dtype)


def exact(out, ref):
    """Same dtype, same values, bit for bit."""
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


# Backends under test. "cpu-gemm" is the cpu backend with the oneDNN path switched off (what a
# CPU without exact oneDNN runs); "cpu-onednn" takes oneDNN wherever it applies, also where the
# GEMM measured faster (the small test shapes are often such); "cuda-mm" runs the cuda backend's
# padding/shift/chunk logic on CPU tensors (torch._int_mm exists on both devices).
def _call(backend, fn, *args, monkeypatch=None, **kw):
    if backend == "cpu-gemm":
        monkeypatch.setattr(cpu, "_onednn_exact", lambda: False)
        return getattr(kernels, fn)(*args, backend="cpu", **kw)
    if backend == "cpu-onednn":
        monkeypatch.setattr(cpu, "_gemm_is_faster", lambda *a: False)
        return getattr(kernels, fn)(*args, backend="cpu", **kw)
    if backend == "cuda-mm":
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(kernels, "_resolve", lambda b, d: kernels.get_backend("cuda"))
        return getattr(kernels, fn)(*args, backend="cuda", **kw)
    return getattr(kernels, fn)(*args, backend=backend, **kw)


FAST = ["cpu", "cpu-gemm", "cpu-onednn", "cuda-mm"]

# (N, C, H, W, O, k, stride, padding, dilation, groups)
CONV_CASES = [
    (2, 16, 8, 8, 16, 3, 1, 1, 1, 1),  # ResNet 3x3
    (2, 16, 9, 8, 32, 3, 2, 1, 1, 1),  # 3x3 stride 2, odd H
    (2, 16, 8, 9, 32, 1, 2, 0, 1, 1),  # 1x1 projection, stride 2
    (1, 3, 15, 14, 8, 7, 2, 3, 1, 1),  # stem 7x7/2, batch 1, C not a multiple of 8
    (2, 8, 7, 7, 8, 3, 1, 1, 1, 8),  # depthwise
    (2, 12, 10, 10, 6, 3, 2, 2, 2, 3),  # groups, dilation, stride 2, padding 2
    (1, 5, 6, 6, 7, 1, 1, 1, 1, 1),  # 1x1 with padding > d(k-1)
    (2, 6, 9, 9, 4, 3, 3, 0, 1, 2),  # stride 3, no padding, groups with 1x1 outputs dropped
    (1, 300, 4, 4, 8, 3, 1, 1, 1, 1),  # large K: float32 too narrow, base-16 digit path
    (1, 1200, 3, 3, 4, 3, 1, 1, 1, 1),  # larger K: oneDNN bound exceeded, GEMM path
    # many outputs: the input gradient's accumulator (O·k² terms) exceeds float32 — two E2
    # planes go in channel blocks (2 and 3 here), stride 1 and the strided phase form
    (2, 4, 5, 5, 130, 3, 1, 1, 1, 1),
    (2, 4, 5, 5, 113, 3, 1, 1, 1, 1),
    (1, 4, 7, 6, 260, 3, 2, 1, 1, 1),
    (1, 8, 12, 20, 8, 3, 1, 1, 1, 1),  # padded grid within 1.4x the output: per-tap weight grad
    # oneDNN 3.12 regressions: a window wholly in the padding (dilation skips the interior);
    # grouped, 1 input channel per group, > 16 outputs per group, zero point 128
    (1, 2, 3, 1, 36, 2, 1, 1, 2, 2),
]


def _conv_inputs(case, xdtype, gen, kind="random"):
    n, c, h, w, o, k, s, p, d, g = case
    x = codes((n, c, h, w), xdtype, gen, kind)
    wt = codes((o, c // g, k, k), torch.int8, gen, kind if kind != "max" else "min")
    ho = reference.conv_out_size(h, k, s, p, d)
    wo = reference.conv_out_size(w, k, s, p, d)
    e = codes((n, o, ho, wo), torch.int8, gen, kind)
    return x, wt, e, (s, p, d, g)


def _three(backend, x, w, e, args, out_exponent, monkeypatch):
    return (
        _call(
            backend,
            "conv2d_forward",
            x,
            w,
            *args,
            out_exponent=out_exponent,
            monkeypatch=monkeypatch,
        ),
        _call(
            backend,
            "conv2d_input_grad",
            e,
            w,
            x.shape,
            *args,
            out_exponent=out_exponent,
            monkeypatch=monkeypatch,
        ),
        _call(
            backend,
            "conv2d_weight_grad",
            x,
            e,
            w.shape,
            *args,
            out_exponent=out_exponent,
            monkeypatch=monkeypatch,
        ),
    )


# ---------------------------------------------------------------------------- the oracle itself


@pytest.mark.parametrize("case", CONV_CASES[:8])
def test_reference_conv_equals_float64_torch(case):
    """The int64 reference equals float64 F.conv2d / torch.nn.grad (exact: sums < 2^53)."""
    gen = torch.Generator().manual_seed(1)
    x, w, e, (s, p, d, g) = _conv_inputs(case, torch.uint8, gen)
    xd, wd, ed = x.double(), w.double(), e.double()
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    fwd = kernels.conv2d_forward(x, w, s, p, d, g, backend="reference")
    exact(fwd.double(), F.conv2d(xd, wd, **kw))
    dx = kernels.conv2d_input_grad(e, w, x.shape, s, p, d, g, backend="reference")
    exact(dx.double(), torch.nn.grad.conv2d_input(x.shape, wd, ed, **kw))
    dw = kernels.conv2d_weight_grad(x, e, w.shape, s, p, d, g, backend="reference")
    exact(dw.double(), torch.nn.grad.conv2d_weight(xd, w.shape, ed, **kw))


def test_reference_linear_equals_float64():
    """Reference linear products equal float64 matmuls."""
    gen = torch.Generator().manual_seed(2)
    x, w, e = (codes(s, torch.int8, gen) for s in [(5, 13), (7, 13), (5, 7)])
    exact(kernels.linear_forward(x, w, backend="reference").double(), x.double() @ w.double().T)
    exact(kernels.linear_input_grad(e, w, backend="reference").double(), e.double() @ w.double())
    exact(kernels.linear_weight_grad(e, x, backend="reference").double(), e.double().T @ x.double())


# ------------------------------------------------------------------------ fast backends vs oracle


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
def test_conv_bit_exact(backend, case, xdtype, monkeypatch):
    """All three conv directions, both output modes, equal the reference bit for bit."""
    gen = torch.Generator().manual_seed(hash(case) % 1000)
    x, w, e, args = _conv_inputs(case, xdtype, gen)
    for out_exponent in (None, -11):
        want = _three("reference", x, w, e, args, out_exponent, monkeypatch)
        got = _three(backend, x, w, e, args, out_exponent, monkeypatch)
        for g, r in zip(got, want, strict=True):
            exact(g, r)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kind", ["max", "min", "neg127"])
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[1], CONV_CASES[4], CONV_CASES[8]])
def test_conv_extreme_codes(backend, kind, case, monkeypatch):
    """All-255 / all-−128 / all-±127 codes (saturating pairs in int16) stay exact."""
    gen = torch.Generator().manual_seed(0)
    for xdtype in (torch.uint8, torch.int8):
        x, w, e, args = _conv_inputs(case, xdtype, gen, kind)
        for out_exponent in (None, 0):
            want = _three("reference", x, w, e, args, out_exponent, monkeypatch)
            for g, r in zip(
                _three(backend, x, w, e, args, out_exponent, monkeypatch), want, strict=True
            ):
                exact(g, r)


@pytest.mark.parametrize("backend", FAST)
def test_zero_point_sums_beyond_float32_stay_exact(backend, monkeypatch):
    """oneDNN turns the u8 sum into float32 before it takes the zero point's share off: random
    int8 codes (entering shifted by 128) against weights all −127 push that sum past 2^24 where
    the int8 sum stays below it (113 channels × 9 taps). Forward, input gradient (alone and as
    two planes) equal the reference bit for bit, with int and device-side exponents."""
    gen = torch.Generator().manual_seed(5)
    x = codes((2, 113, 5, 5), torch.int8, gen)
    w = torch.full((113, 113, 3, 3), -127, dtype=torch.int8)
    e = codes((2, 113, 5, 5), torch.int8, gen)
    fine = codes(e.shape, torch.int8, gen)
    for out_exponent in (None, -11, torch.tensor(-11)):
        want = _three("reference", x, w, e, (1, 1, 1, 1), out_exponent, monkeypatch)
        got = _three(backend, x, w, e, (1, 1, 1, 1), out_exponent, monkeypatch)
        for g, r in zip(got, want, strict=True):
            exact(g, r)
    got = _call(backend, "conv2d_input_grad_planes", torch.cat([e, fine]), w, x.shape, 1, 1,
                shift=7, out_exponent=-11, monkeypatch=monkeypatch)  # fmt: skip
    exact(got, _planes_oracle(e, fine, w, x.shape, (1, 1, 1, 1), 7, -11))


def test_conv_float_output_rounds_once_above_2_24():
    """Accumulators beyond 2^24 are rounded once in the float mode (not exact there, by design)
    and are exact integers in the integer mode (digit split)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(200, 256, (1, 512, 5, 5), dtype=torch.uint8, generator=gen)
    w = torch.randint(100, 128, (16, 512, 3, 3), dtype=torch.int8, generator=gen)
    ref = kernels.conv2d_forward(x, w, 1, 1, backend="reference")
    assert ref.abs().max() > 2**24 and ref.dtype == torch.int32
    exact(kernels.conv2d_forward(x, w, 1, 1, backend="cpu"), ref)
    for out_exponent in (0, -7, 5):
        exact(
            kernels.conv2d_forward(x, w, 1, 1, backend="cpu", out_exponent=out_exponent),
            (ref.double() * 2.0**out_exponent).float(),
        )


@pytest.mark.parametrize("backend", ["cpu", "cpu-gemm"])
def test_layouts_and_non_contiguous(backend, monkeypatch):
    """channels_last, NCHW and strided (sliced) inputs give the same exact results."""
    gen = torch.Generator().manual_seed(3)
    x, w, e, args = _conv_inputs(CONV_CASES[1], torch.uint8, gen)
    want = _three("reference", x, w, e, args, -3, monkeypatch)
    big_x = codes((x.shape[0], x.shape[1] * 2, x.shape[2], x.shape[3]), torch.uint8, gen)
    big_x[:, ::2] = x
    variants = [
        (x.contiguous(memory_format=CL), w, e.contiguous(memory_format=CL)),
        (
            big_x[:, ::2],
            w.contiguous(memory_format=CL),
            e.transpose(2, 3).contiguous().transpose(2, 3),
        ),
    ]
    for xv, wv, ev in variants:
        got = _three(backend, xv, wv, ev, args, -3, monkeypatch)
        for g, r in zip(got, want, strict=True):
            exact(g, r)


def test_exponents_outside_float32_normal_range():
    """out_exponent far outside the normal range still rounds once from the exact integer."""
    gen = torch.Generator().manual_seed(4)
    x, w, e, args = _conv_inputs(CONV_CASES[0], torch.uint8, gen)
    for out_exponent in (-140, -126, 100, 140):
        ref = kernels.conv2d_forward(x, w, *args, backend="reference", out_exponent=out_exponent)
        exact(kernels.conv2d_forward(x, w, *args, backend="cpu", out_exponent=out_exponent), ref)
        lin = (x[0, 0].to(torch.int8), w.reshape(16, -1)[:, :8])
        exact(
            kernels.linear_forward(*lin, backend="cpu", out_exponent=out_exponent),
            kernels.linear_forward(*lin, backend="reference", out_exponent=out_exponent),
        )


# ------------------------------------------------------------------------------------- linear


LINEAR_SHAPES = [(1, 1, 1), (5, 13, 7), (16, 24, 8), (17, 100, 3), (33, 9, 65)]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("xdtype", [torch.int8, torch.uint8])
def test_linear_bit_exact(backend, shape, xdtype, monkeypatch):
    """x @ wᵀ, e @ w, eᵀ @ x: M ≤ 16, K not a multiple of 8, transposed operands."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(m * 100 + k)
    x, w, e = (
        codes((m, k), xdtype, gen),
        codes((n, k), torch.int8, gen),
        codes((m, n), torch.int8, gen),
    )
    for out_exponent in (None, -6):
        for fn, args in [
            ("linear_forward", (x, w)),
            ("linear_input_grad", (e, w)),
            ("linear_weight_grad", (e, x)),
            ("linear_forward", (x.T.contiguous().T, w.T.contiguous().T)),
        ]:
            exact(
                _call(backend, fn, *args, out_exponent=out_exponent, monkeypatch=monkeypatch),
                _call("reference", fn, *args, out_exponent=out_exponent),
            )


# ------------------------------------------------------------------------------------ overflow


@pytest.mark.parametrize("backend", ["cpu", "cuda-mm"])
def test_accumulator_beyond_int32_is_exact_int64(backend, monkeypatch):
    """K · 255 · 128 > 2^31: the result is int64 and exact, never wrapped."""
    k = 70_000
    x = torch.full((2, k), 255, dtype=torch.uint8)
    w = torch.full((3, k), -128, dtype=torch.int8)
    out = _call(backend, "linear_forward", x, w, monkeypatch=monkeypatch)
    assert out.dtype == torch.int64
    assert bool((out == -k * 255 * 128).all())
    e = torch.full((k, 2), -128, dtype=torch.int8)
    xs = torch.full((k, 3), -128, dtype=torch.int8)
    dw = _call(backend, "linear_weight_grad", e, xs, out_exponent=None, monkeypatch=monkeypatch)
    assert dw.dtype == torch.int32 and bool((dw == k * 128 * 128).all())  # 1.1e9 < 2^31
    # conv weight gradient: K = N·Ho·Wo = 2·200·200 = 80 000 products of 255 · −128
    xc = torch.full((2, 1, 200, 200), 255, dtype=torch.uint8)
    ec = torch.full((2, 2, 200, 200), -128, dtype=torch.int8)
    got = _call(backend, "conv2d_weight_grad", xc, ec, (2, 1, 1, 1), monkeypatch=monkeypatch)
    assert got.dtype == torch.int64 and bool((got == -80_000 * 255 * 128).all())
    scaled = _call(
        backend,
        "conv2d_weight_grad",
        xc,
        ec,
        (2, 1, 1, 1),
        out_exponent=-20,
        monkeypatch=monkeypatch,
    )
    exact(scaled, torch.full((2, 1, 1, 1), -80_000 * 255 * 128 * 2.0**-20).float())


def test_accumulator_dtype_rule():
    """int32 exactly when K · max|a| · max|b| ≤ 2^31 − 1 for the dtypes."""
    assert kernels.accumulator_dtype(65_793, torch.uint8, torch.int8) == torch.int32
    assert kernels.accumulator_dtype(65_794, torch.uint8, torch.int8) == torch.int64
    assert kernels.accumulator_dtype(131_071, torch.int8, torch.int8) == torch.int32
    assert kernels.accumulator_dtype(131_072, torch.int8, torch.int8) == torch.int64


# ---------------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 2),
    cg=st.integers(1, 5),
    og=st.integers(1, 5),
    g=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    ph=st.integers(0, 3),
    pw=st.integers(0, 3),
    dh=st.integers(1, 2),
    dw=st.integers(1, 2),
    xu=st.booleans(),
    seed=st.integers(0, 99),
    out_exponent=st.sampled_from([None, -9, 2]),
)
def test_random_conv_shapes(
    n, cg, og, g, h, w, kh, kw, sh, sw, ph, pw, dh, dw, xu, seed, out_exponent
):
    """Random small conv geometry (rectangular kernels, per-axis stride/padding/dilation)."""
    ho = reference.conv_out_size(h, kh, sh, ph, dh)
    wo = reference.conv_out_size(w, kw, sw, pw, dw)
    if ho < 1 or wo < 1:
        with pytest.raises(ValueError, match="smaller than the dilated kernel"):
            kernels.conv2d_forward(
                torch.zeros((n, cg * g, h, w), dtype=torch.int8),
                torch.zeros((og * g, cg, kh, kw), dtype=torch.int8),
                (sh, sw),
                (ph, pw),
                (dh, dw),
                g,
            )
        return
    gen = torch.Generator().manual_seed(seed)
    x = codes((n, cg * g, h, w), torch.uint8 if xu else torch.int8, gen)
    wt = codes((og * g, cg, kh, kw), torch.int8, gen)
    e = codes((n, og * g, ho, wo), torch.int8, gen)
    args = ((sh, sw), (ph, pw), (dh, dw), g)

    def three(backend):
        return (
            kernels.conv2d_forward(x, wt, *args, backend=backend, out_exponent=out_exponent),
            kernels.conv2d_input_grad(
                e, wt, x.shape, *args, backend=backend, out_exponent=out_exponent
            ),
            kernels.conv2d_weight_grad(
                x, e, wt.shape, *args, backend=backend, out_exponent=out_exponent
            ),
        )

    for a, b in zip(three("cpu"), three("reference"), strict=True):
        exact(a, b)


@pytest.mark.parametrize(
    "groups, cg, h, w, kh, kw, stride",
    [
        (2, 1, 5, 3, 3, 3, (1, 2)),  # hypothesis's find: output 3×1, oneDNN gave garbage
        (1, 1, 7, 4, 4, 4, (1, 3)),  # ungrouped too
        (3, 2, 6, 4, 1, 4, (1, 2)),
        (1, 2, 3, 7, 3, 3, (2, 1)),  # the transposed case: output 1 high
    ],
)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_strided_outputs_one_wide_are_exact(groups, cg, h, w, kh, kw, stride, dtype):
    """oneDNN 3.12 returned wrong sums for strided convolutions whose output is 1 wide or high;
    such convolutions take the GEMM path (regression: tests/test_kernels.py hypothesis search)."""
    gen = torch.Generator().manual_seed(0)
    x = codes((1, cg * groups, h, w), dtype, gen)
    wt = codes((2 * groups, cg, kh, kw), torch.int8, gen)
    args = (stride, (0, 0), (1, 1), groups)
    exact(
        kernels.conv2d_forward(x, wt, *args, backend="cpu"),
        kernels.conv2d_forward(x, wt, *args, backend="reference"),
    )


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_weight_grad_carries_the_nan_guard(backend):
    """``out_guard`` (NaN for a non-finite operand) reaches every element of the weight gradient,
    on the stride-1 implicit form as well (it used to drop the guard there)."""
    gen = torch.Generator().manual_seed(0)
    x = codes((1, 4, 32, 32), torch.uint8, gen)  # 32×32, padding 1: the implicit form's shape
    e = codes((1, 3, 32, 32), torch.int8, gen)
    nan = torch.tensor(float("nan"))
    dw = kernels.conv2d_weight_grad(
        x, e, (3, 4, 3, 3), 1, 1, 1, 1, backend=backend, out_exponent=-4, out_guard=nan
    )
    assert torch.isnan(dw).all()
    fine = kernels.conv2d_weight_grad(
        x, e, (3, 4, 3, 3), 1, 1, 1, 1, backend=backend, out_exponent=-4,
        out_guard=torch.tensor(0.0),
    )  # fmt: skip
    assert torch.isfinite(fine).all()


def _planes_oracle(coarse, fine, w, size, args, shift, out_exponent):
    """``(2^shift · P(coarse) + P(fine)) · 2^e`` from the reference's int64 accumulators, the
    sum exact in int64 and rounded once to float32 (through float64: exact below 2^53)."""
    acc = [
        kernels.conv2d_input_grad(p, w, size, *args, backend="reference") for p in (coarse, fine)
    ]
    total = acc[0].to(torch.int64) * 2**shift + acc[1].to(torch.int64)
    return (total.double() * 2.0**out_exponent).float()


@pytest.mark.parametrize("backend", [*FAST, "reference"])
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("kind", ["random", "min", "neg127"])
def test_input_grad_planes_bit_exact(backend, case, kind, monkeypatch):
    """Two E2 planes' input gradient (the sum inside oneDNN on the CPU) equals the formula from
    the oracle's integer accumulators, bit for bit — small K (float32 exact) and large K."""
    gen = torch.Generator().manual_seed(hash((case, kind)) % 1000)
    x, w, e, args = _conv_inputs(case, torch.int8, gen, kind)
    fine = codes(e.shape, torch.int8, gen)
    for shift, out_exponent in ((7, -11), (15, -20), (0, 3)):
        got = _call(backend, "conv2d_input_grad_planes", torch.cat([e, fine]), w, x.shape, *args,
                    shift=shift, out_exponent=out_exponent, monkeypatch=monkeypatch)  # fmt: skip
        exact(got, _planes_oracle(e, fine, w, x.shape, args, shift, out_exponent))
        assert got.shape == x.shape


def test_input_grad_planes_tensor_exponent_nan_guard_and_bad_input():
    """A 0-dim exponent stays on the device; a NaN guard poisons every element; a wrong call says
    what is wrong."""
    gen = torch.Generator().manual_seed(3)
    e = codes((4, 8, 6, 6), torch.int8, gen)
    w = codes((8, 5, 3, 3), torch.int8, gen)
    size = (2, 5, 6, 6)
    got = kernels.conv2d_input_grad_planes(
        e, w, size, 1, 1, shift=7, out_exponent=torch.tensor(-9), out_guard=torch.tensor(0.0)
    )
    exact(got, _planes_oracle(e[:2], e[2:], w, size, (1, 1, 1, 1), 7, -9))
    nan = kernels.conv2d_input_grad_planes(
        e, w, size, 1, 1, shift=7, out_exponent=torch.tensor(-9), out_guard=torch.tensor(torch.nan)
    )
    assert torch.isnan(nan).all()
    with pytest.raises(ValueError, match="two planes of N images"):
        kernels.conv2d_input_grad_planes(e[:3], w, size, 1, 1, shift=7, out_exponent=0)
    with pytest.raises(ValueError, match="shift must be an int"):
        kernels.conv2d_input_grad_planes(e, w, size, 1, 1, shift=-1, out_exponent=0)
    with pytest.raises(ValueError, match="out_exponent is required"):
        kernels.conv2d_input_grad_planes(e, w, size, 1, 1, shift=7, out_exponent=None)
    with pytest.raises(ValueError, match=r"input_size must be \(N, C, H, W\) = \(2, 5"):
        kernels.conv2d_input_grad_planes(e, w, (4, 5, 6, 6), 1, 1, shift=7, out_exponent=0)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("groups", [1, 2])
def test_strided_1x1_input_grad_carries_the_nan_guard(backend, groups):
    """The 1×1 strided input gradient scatters scaled products into the guard: with a NaN guard
    every element is NaN (the positions no tap reaches too), with 0 it equals the reference."""
    gen = torch.Generator().manual_seed(1)
    e = codes((2, 6, 4, 5), torch.int8, gen)
    w = codes((6, 4 // groups, 1, 1), torch.int8, gen)
    nan = torch.tensor(float("nan"))
    dx = kernels.conv2d_input_grad(
        e, w, (2, 4, 8, 9), 2, 0, 1, groups, backend=backend, out_exponent=-5, out_guard=nan
    )
    assert torch.isnan(dx).all()
    got = kernels.conv2d_input_grad(
        e, w, (2, 4, 8, 9), 2, 0, 1, groups, backend=backend, out_exponent=-5,
        out_guard=torch.tensor(0.0),
    )  # fmt: skip
    want = kernels.conv2d_input_grad(e, w, (2, 4, 8, 9), 2, 0, 1, groups, backend="reference",
                                     out_exponent=-5)  # fmt: skip
    exact(got, want)


# ---------------------------------------------------------------------------------- real CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available here")
@pytest.mark.parametrize("case", CONV_CASES[:6])
def test_cuda_backend_bit_exact(case, monkeypatch):
    """On a GPU the cuda backend equals the CPU reference."""
    gen = torch.Generator().manual_seed(7)
    x, w, e, args = _conv_inputs(case, torch.uint8, gen)
    want = _three("reference", x, w, e, args, -5, monkeypatch)
    got = _three("cuda", x.cuda(), w.cuda(), e.cuda(), args, -5, monkeypatch)
    for g, r in zip(got, want, strict=True):
        exact(g.cpu(), r)


# ------------------------------------------------------------------------------- API and errors


def test_backends_and_default():
    """reference and cpu are available here; auto resolves by device; the default is settable."""
    assert {"reference", "cpu"} <= set(kernels.available_backends())
    x = torch.ones((2, 3), dtype=torch.int8)
    try:
        kernels.set_default_backend("reference")
        assert kernels.get_default_backend() == "reference"
        exact(kernels.linear_forward(x, x), torch.full((2, 2), 3, dtype=torch.int32))
    finally:
        kernels.set_default_backend("auto")


def test_backend_objects_share_one_typed_interface():
    """Every backend is a KernelBackend; called with a ConvGeometry and an OutputSpec it gives
    what the public entry point gives; an unknown name is refused with a close match."""
    x = torch.randint(0, 256, (2, 4, 6, 6), dtype=torch.uint8)
    w = torch.randint(-128, 128, (4, 2, 3, 3), dtype=torch.int8)
    geometry = kernels.ConvGeometry(stride=(2, 1), padding=(1, 1), dilation=(1, 1), groups=2)
    want = kernels.conv2d_forward(x, w, (2, 1), 1, 1, 2, backend="reference")
    for name in kernels.available_backends():
        if name == "cuda":
            continue
        impl = kernels.get_backend(name)
        assert isinstance(impl, kernels.KernelBackend) and impl.name == name
        got = impl.conv2d_forward(
            x, w, geometry=geometry, out=kernels.OutputSpec(torch.int32, None)
        )
        exact(got, want)
    with pytest.raises(ValueError, match="did you mean 'cuda'"):
        kernels.get_backend("cudaa")


def test_bad_input_messages():
    """Wrong dtype, shapes and backend names raise TypeError/ValueError naming the fix."""
    x8 = torch.zeros((2, 4), dtype=torch.int8)
    with pytest.raises(TypeError, match="x must hold int8 or uint8 integer codes.*float32"):
        kernels.linear_forward(x8.float(), x8)
    with pytest.raises(TypeError, match="w must hold int8"):
        kernels.linear_forward(x8, x8.to(torch.uint8))
    with pytest.raises(ValueError, match=r"x.shape\[1\] == w.shape\[1\]"):
        kernels.linear_forward(x8, torch.zeros((3, 5), dtype=torch.int8))
    with pytest.raises(ValueError, match="did you mean 'cpu'"):
        kernels.linear_forward(x8, x8, backend="cpuu")
    with pytest.raises(ValueError, match="did you mean 'reference'"):
        kernels.set_default_backend("refrence")
    with pytest.raises(TypeError, match="out_exponent must be None or an int"):
        kernels.linear_forward(x8, x8, out_exponent=0.5)
    xc = torch.zeros((1, 4, 5, 5), dtype=torch.uint8)
    wc = torch.zeros((2, 3, 3, 3), dtype=torch.int8)
    with pytest.raises(ValueError, match="groups 1 are inconsistent"):
        kernels.conv2d_forward(xc, wc)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        kernels.conv2d_forward(xc, wc[:, :1].repeat(1, 4, 1, 1), stride=0)
    with pytest.raises(ValueError, match="e has shape"):
        kernels.conv2d_input_grad(
            torch.zeros((1, 2, 4, 4), dtype=torch.int8), wc[:, :1].repeat(1, 4, 1, 1), xc.shape
        )
    with pytest.raises(ValueError, match="not available here"):
        if torch.cuda.is_available():
            raise ValueError("not available here")  # nothing to check on a GPU machine
        kernels.linear_forward(x8, x8, backend="cuda")
