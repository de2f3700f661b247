"""Autograd placement of quantizers, and the integer-code helpers of the int8 mode."""

from __future__ import annotations

import functools

import pytest
import torch

from wageubn.quant import (
    IntTensor,
    decode,
    direct_quantize,
    encode,
    min_exponent,
    quantize_backward,
    quantize_forward,
    shift_quantize,
)


def test_quantize_forward_is_straight_through():
    x = torch.tensor([0.3, -1.26, 2.0], requires_grad=True)
    fn = functools.partial(direct_quantize, bits=3)
    y = quantize_forward(x, fn)
    torch.testing.assert_close(y, direct_quantize(x.detach(), 3), rtol=0, atol=0)
    g = torch.tensor([0.1, 0.2, -0.7])
    y.backward(g)
    torch.testing.assert_close(x.grad, g, rtol=0, atol=0)


def test_quantize_backward_quantizes_only_the_gradient():
    x = torch.tensor([0.3, -1.26, 2.0], requires_grad=True)
    fn = functools.partial(shift_quantize, bits=2)
    y = quantize_backward(x, fn)
    torch.testing.assert_close(y, x.detach(), rtol=0, atol=0)
    g = torch.tensor([0.1, 0.3, -0.7])
    y.backward(g)
    torch.testing.assert_close(x.grad, shift_quantize(g, 2), rtol=0, atol=0)


def test_quantize_backward_sees_summed_gradient():
    """E1 acts on dL/da summed over all consumers of a, not on each branch separately."""
    x = torch.tensor([0.3, -0.2], requires_grad=True)
    fn = functools.partial(shift_quantize, bits=2)
    a = quantize_backward(x, fn)
    (a * torch.tensor([0.26, 0.1])).sum().add((a * torch.tensor([0.0, 0.9])).sum()).backward()
    summed = torch.tensor([0.26, 1.0])
    torch.testing.assert_close(x.grad, shift_quantize(summed, 2), rtol=0, atol=0)


def test_no_grad_inputs_pass_through():
    x = torch.tensor([0.3])
    assert quantize_backward(x, lambda t: t * 0) is x
    assert not quantize_forward(x, functools.partial(direct_quantize, bits=4)).requires_grad


def test_encode_decode_round_trip():
    x = torch.tensor([-127, -3, 0, 5, 127], dtype=torch.float32) * 2.0**-7
    q = encode(x, -7)
    assert q.codes.dtype == torch.int8 and q.exponent == -7
    assert q.codes.tolist() == [-127, -3, 0, 5, 127]
    torch.testing.assert_close(q.dequantize(), x, rtol=0, atol=0)
    torch.testing.assert_close(decode(q.codes, q.exponent), x, rtol=0, atol=0)
    u = encode(torch.tensor([0.0, 255.0]), 0, 8, signed=False)
    assert u.codes.dtype == torch.uint8 and u.codes.tolist() == [0, 255]
    assert encode(torch.tensor([300.0]), 0, 16).codes.dtype == torch.int16
    assert isinstance(q, IntTensor)


def test_encode_refuses_to_round_or_clip():
    with pytest.raises(ValueError, match="not a multiple of 2\\^-7"):
        encode(torch.tensor([0.0, 2.0**-8]), -7)
    with pytest.raises(ValueError, match="code 128 .* outside \\[-127, 127\\]"):
        encode(torch.tensor([1.0]), -7)
    with pytest.raises(TypeError, match="exponent must be an int"):
        encode(torch.tensor([1.0]), -7.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("amax", [1e-6, 0.3, 1.0, 127.0, 127.5, 128.0, 3e4])
def test_min_exponent_is_smallest_without_saturation(amax):
    x = torch.tensor([amax, -amax / 3])
    e = min_exponent(x, 8)
    assert amax <= 127 * 2.0**e
    assert amax > 127 * 2.0 ** (e - 1)
    assert min_exponent(x, 8, floor=e + 3) == e + 3
    assert min_exponent(torch.zeros(3), 8) is None
    assert min_exponent(torch.zeros(3), 8, floor=-7) == -7
