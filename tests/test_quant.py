"""The six WAGEUBN quantizers: bit-exact oracles, properties, statistics and bad input."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from wageubn import quant
from wageubn.quant import (
    clipped_direct_quantize,
    constant_quantize,
    direct_quantize,
    flag_quantize,
    pow2_scale,
    shift_quantize,
)

EXACT = {"rtol": 0, "atol": 0}


def assert_exact(out: torch.Tensor, expected: torch.Tensor) -> None:
    """``out`` equals the exact (rational) result rounded once to ``out``'s dtype.

    Every result is on a grid and representable, except where it underflows below the smallest
    subnormal; there the single correct rounding is the only right answer.
    """
    assert out.dtype in (torch.float32, torch.float64)
    torch.testing.assert_close(out, expected.to(out.dtype), **EXACT)


BITS = [2, 3, 4, 8, 10, 13, 15, 16, 24, 32]


def awkward(seed: int = 0, bits: int = 8) -> list[torch.Tensor]:
    """Tensors that stress the edges: ties, ±0, R boundaries, tiny and large magnitudes.

    Float32 past 24 bits cannot hold the clip bounds ``1 − 2^(1−k)`` and ``2^(k−1) − 1`` exactly
    (tested separately below), so there the oracle comparison runs in float64.
    """
    g = torch.Generator().manual_seed(seed)
    sqrt_half = torch.tensor(math.sqrt(0.5), dtype=torch.float32)
    below = torch.nextafter(sqrt_half, torch.tensor(0.0))
    above = torch.nextafter(sqrt_half, torch.tensor(1.0))
    ties = torch.arange(-8, 9, dtype=torch.float32) + 0.5
    dtype = torch.float32 if bits <= 24 else torch.float64
    cases = [
        torch.randn(7, 5, generator=g),
        torch.randn(3, 4, 5, generator=g) * 1e-30,
        torch.randn(64, generator=g) * 1e4,
        torch.rand(33, generator=g) * 1e-3,
        ties / 128,  # exact .5 ties at k = 8
        ties / 2**15,
        torch.tensor([0.0, -0.0, 1.0, -1.0, 0.5, -0.5]),
        torch.tensor([below.item(), 0.25, -0.1]) * 2**5,  # max|x| just below 2^(r-1/2)
        torch.tensor([above.item(), 0.25, -0.1]) * 2**-7,  # max|x| just above
        torch.tensor([-above.item() * 8, 3.0]),
        torch.tensor([1.0 - 2**-24, 0.999]),
        torch.tensor([2.0**-149, 0.0]),  # smallest subnormal
        torch.full((4,), 2.0**-126),
    ]
    return [c.to(dtype) for c in cases]


# -- oracle tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("bits", BITS)
def test_direct_matches_reference(bits):
    for x in awkward(bits, bits):
        assert_exact(direct_quantize(x, bits), ref.direct(x, bits))


@pytest.mark.parametrize("bits", BITS)
def test_clipped_direct_matches_reference(bits):
    for x in awkward(bits, bits):
        assert_exact(clipped_direct_quantize(x, bits), ref.clipped_direct(x, bits))


@pytest.mark.parametrize("bits", [25, 32])
def test_float32_clip_bounds_stay_in_range(bits):
    """Where float32 cannot hold the bound, the clip rounds it toward zero (never to 1.0)."""
    x = torch.tensor([1.0, -1.0, 0.75, 2.0**-30], dtype=torch.float32)
    assert bool((clipped_direct_quantize(x, bits).abs() < 1).all())
    assert bool((shift_quantize(x, bits, narrow_range=True).abs() < 1).all())
    assert bool((flag_quantize(x, bits).abs() < 1).all())


def test_pow2_scale_matches_reference():
    for x in awkward(1):
        assert float(pow2_scale(x)) == ref.pow2_scale(x), x
    g = torch.Generator().manual_seed(5)
    for _ in range(200):
        x = torch.randn(6, generator=g) * 2.0 ** float(torch.randint(-40, 40, (1,), generator=g))
        assert float(pow2_scale(x)) == ref.pow2_scale(x)


def test_pow2_scale_boundary_is_exact():
    """Within one ulp of 2^(r+1/2) the answer flips exactly at sqrt(1/2)."""
    sqrt_half = torch.tensor(math.sqrt(0.5), dtype=torch.float32)
    below = float(torch.nextafter(sqrt_half, torch.tensor(0.0)))
    above = float(torch.nextafter(sqrt_half, torch.tensor(1.0)))
    for r in (-20, 0, 3, 40):
        # m·2^(r+1): m < sqrt(1/2) rounds down to 2^r, m > sqrt(1/2) up to 2^(r+1)
        assert float(pow2_scale(torch.tensor([below * 2.0 ** (r + 1)]))) == 2.0**r
        assert float(pow2_scale(torch.tensor([above * 2.0 ** (r + 1)]))) == 2.0 ** (r + 1)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("narrow", [False, True])
def test_shift_matches_reference(bits, narrow):
    for x in awkward(bits, bits):
        assert_exact(shift_quantize(x, bits, narrow_range=narrow), ref.shift(x, bits, narrow))


@pytest.mark.parametrize("bits", BITS)
def test_flag_matches_reference(bits):
    for x in awkward(bits, bits):
        assert_exact(flag_quantize(x, bits), ref.flag(x, bits))


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("dr", [2, 8, 32, 128])
def test_constant_matches_reference(bits, dr):
    for i, x in enumerate(awkward(dr)):
        g = torch.Generator().manual_seed(100 + i)
        u = torch.rand(x.shape, generator=torch.Generator().manual_seed(100 + i), dtype=x.dtype)
        assert_exact(constant_quantize(x, bits, dr, generator=g), ref.constant(x, bits, dr, u))


def test_float64_inputs_keep_dtype_and_match():
    x = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for fn, r in [
        (direct_quantize, ref.direct),
        (clipped_direct_quantize, ref.clipped_direct),
        (shift_quantize, ref.shift),
        (flag_quantize, ref.flag),
    ]:
        out = fn(x, 8)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, r(x, 8), **EXACT)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: direct_quantize(x, 8),
        lambda x: clipped_direct_quantize(x, 8),
        lambda x: shift_quantize(x, 8),
        lambda x: flag_quantize(x, 8),
        lambda x: constant_quantize(x, 8, 128, generator=torch.Generator().manual_seed(0)),
    ],
)
def test_all_zero_input_gives_zeros(fn):
    for shape in [(0,), (5,), (2, 3, 4)]:
        out = fn(torch.zeros(shape))
        assert out.shape == shape and not out.any()
    assert float(pow2_scale(torch.zeros(3))) == 0.0


# -- bad input ---------------------------------------------------------------------------------

ALL_FUNCS = [
    lambda x, b: direct_quantize(x, b),
    lambda x, b: clipped_direct_quantize(x, b),
    lambda x, b: shift_quantize(x, b),
    lambda x, b: flag_quantize(x, b),
    lambda x, b: constant_quantize(x, b, 128),
]


@pytest.mark.parametrize("fn", ALL_FUNCS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_raise(fn, bad):
    x = torch.tensor([0.5, bad, 1.0])
    with pytest.raises(ValueError, match="NaN|Inf"):
        fn(x, 8)


def test_pow2_scale_nan_raises():
    with pytest.raises(ValueError, match="1 NaN"):
        pow2_scale(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize("fn", ALL_FUNCS)
@pytest.mark.parametrize("bits", [0, 1, 33, -8])
def test_bits_out_of_range(fn, bits):
    with pytest.raises(ValueError, match=rf"\[2, 32\], got {bits}"):
        fn(torch.ones(3), bits)


@pytest.mark.parametrize("fn", ALL_FUNCS)
@pytest.mark.parametrize("bits", [8.0, "8", True, None])
def test_bits_wrong_type(fn, bits):
    with pytest.raises(TypeError, match="bits must be an int"):
        fn(torch.ones(3), bits)


@pytest.mark.parametrize("dr", [1, 0, -4, 2.5, 2**25])
def test_constant_bad_range(dr):
    with pytest.raises(ValueError, match="dr"):
        constant_quantize(torch.ones(3), 8, dr)


def test_integer_tensor_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        direct_quantize(torch.ones(3, dtype=torch.int32), 8)


# -- properties --------------------------------------------------------------------------------

finite32 = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, max_side=6)
arrays = hnp.arrays(np.float32, shapes, elements=finite32)
bits_st = st.integers(2, 24)


def on_grid(y: torch.Tensor, step: float) -> bool:
    v = y.double() / step
    return bool((v == torch.round(v)).all())


@settings(max_examples=150, deadline=None)
@given(arrays, bits_st)
def test_direct_properties(a, bits):
    x = torch.from_numpy(a)
    y = direct_quantize(x, bits)
    step = 2.0 ** (1 - bits)
    assert on_grid(y, step)
    assert torch.equal(direct_quantize(y, bits), y)  # idempotent
    assert bool(((y.double() - x.double()).abs() <= step / 2).all())  # error bound
    assert torch.equal(direct_quantize(-x, bits), -y)  # odd symmetry
    order = torch.argsort(x.flatten())
    assert bool((y.flatten()[order].diff() >= 0).all())  # monotone


@settings(max_examples=150, deadline=None)
@given(arrays, bits_st)
def test_clipped_properties(a, bits):
    x = torch.from_numpy(a)
    y = clipped_direct_quantize(x, bits)
    lim = 1 - 2.0 ** (1 - bits)
    assert on_grid(y, 2.0 ** (1 - bits))
    assert bool((y.abs() <= lim).all())
    assert torch.equal(clipped_direct_quantize(y, bits), y)
    assert torch.equal(clipped_direct_quantize(-x, bits), -y)
    order = torch.argsort(x.flatten())
    assert bool((y.flatten()[order].diff() >= 0).all())
    inside = x.abs() <= lim
    assert bool(((y - x).abs()[inside].double() <= 2.0**-bits).all())


@settings(max_examples=150, deadline=None)
@given(arrays, st.sampled_from([3, 4, 5, 7, 8, 8, 8, 12, 16]))
def test_shift_properties(a, bits):
    x = torch.from_numpy(a)
    y = shift_quantize(x, bits)
    R = float(pow2_scale(x)) if x.abs().max() > 0 else 1.0
    assert bool((y.abs() <= R).all())
    assert on_grid(y, R * 2.0 ** (1 - bits))
    # idempotent whenever R survives: always at k = 8 (round(128·sqrt(1/2)) = 91 > 90.51), not at
    # every k (k = 5: max 363 → 352 drops R from 2^9 to 2^8)
    if bits == 8 or float(pow2_scale(y)) == R:
        assert torch.equal(shift_quantize(y, bits), y)
    assert torch.equal(shift_quantize(-x, bits), -y)
    assert torch.equal(shift_quantize(x * 4, bits), y * 4)  # power-of-two scale invariance
    order = torch.argsort(x.flatten())
    assert bool((y.flatten()[order].diff() >= 0).all())
    inside = x.abs() <= R
    assert bool(((y.double() - x.double()).abs()[inside] <= R * 2.0**-bits).all())


@settings(max_examples=150, deadline=None)
@given(arrays, st.integers(2, 16))
def test_flag_properties(a, bits):
    x = torch.from_numpy(a)
    y = flag_quantize(x, bits)
    if not x.abs().max() > 0:
        assert not y.any()
        return
    s = float(pow2_scale(x)) / 2 ** (bits - 1)
    assert torch.equal(flag_quantize(-x, bits), -y)
    if float(x.abs().max()) > 2.0**-100:  # scale invariance, away from subnormal underflow
        assert torch.equal(flag_quantize(x * 2, bits), y * 2)
    fine = x.abs() < s
    assert on_grid(y[fine], s * 2.0 ** (1 - bits)) and bool((y[fine].abs() <= s).all())
    assert on_grid(y[~fine], s)
    assert bool((y.abs() <= s * (2 ** (bits - 1) - 1)).all())
    err = (y.double() - x.double()).abs()
    assert bool((err[fine] <= s * 2.0**-bits).all())
    unclipped = ~fine & (x.abs() <= s * (2 ** (bits - 1) - 1))
    assert bool((err[unclipped] <= s / 2).all())
    order = torch.argsort(x.flatten())
    assert bool((y.flatten()[order].diff() >= 0).all())


@settings(max_examples=100, deadline=None)
@given(arrays, st.integers(2, 16), st.sampled_from([2, 8, 32, 128]), st.integers(0, 2**31))
def test_constant_properties(a, bits, dr, seed):
    x = torch.from_numpy(a)
    y = constant_quantize(x, bits, dr, generator=torch.Generator().manual_seed(seed))
    lsb = 2.0 ** (-2 * (bits - 1))
    assert on_grid(y, lsb)
    assert bool((y.abs() <= (dr - 1) * lsb).all())
    # SR moves a value by less than one step, towards a neighbour: sign is kept or becomes 0
    assert bool((y * x >= 0).all())
    again = constant_quantize(x, bits, dr, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(y, again)  # reproducible from the seed


# -- stochastic rounding statistics -----------------------------------------------------------


def test_stochastic_round_unbiased():
    """E[SR(v)] = v. Each draw has variance p(1−p) <= 1/4, so the mean of N draws has standard
    deviation <= 1/(2·sqrt(N)); 6 of them bound it (false alarm < 1e-8, and the seed is fixed)."""
    n = 40_000
    v = torch.tensor([-2.75, -0.5, -0.1, 0.0, 0.3, 0.5, 1.9, 7.0, 126.01])
    g = torch.Generator().manual_seed(1234)
    draws = torch.stack([quant.stochastic_round(v, g) for _ in range(n)])
    assert bool(((draws - torch.floor(v)) >= 0).all() and ((draws - torch.floor(v)) <= 1).all())
    bound = 6 / (2 * math.sqrt(n))
    assert (draws.double().mean(0) - v.double()).abs().max() <= bound
    whole = v == torch.floor(v)
    assert torch.equal(draws[:, whole], v[whole].expand(n, -1))  # integers never move


def test_constant_quantize_unbiased_in_codes():
    """E[CQ(x)] / 2^(−2(k−1)) = clip(dr·x/R(x)); same 6-sigma bound on the mean (1.3 saturates)."""
    x = torch.tensor([1.3, -0.2, 0.011, 0.5, -0.9])
    bits, dr, n = 8, 32, 20_000
    g = torch.Generator().manual_seed(9)
    codes = torch.stack(
        [constant_quantize(x, bits, dr, generator=g) / 2.0 ** (-2 * (bits - 1)) for _ in range(n)]
    )
    expect = (dr * x.double() / float(pow2_scale(x))).clamp(-(dr - 1), dr - 1)
    assert (codes.double().mean(0) - expect).abs().max() <= 6 / (2 * math.sqrt(n))


def test_generator_state_decides_draws():
    x = torch.randn(100, generator=torch.Generator().manual_seed(0))
    a = constant_quantize(x, 8, 128, generator=torch.Generator().manual_seed(1))
    b = constant_quantize(x, 8, 128, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)
