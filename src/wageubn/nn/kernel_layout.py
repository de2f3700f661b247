"""How the fused kernels see tensors: the channel view of a BN input, and packed integer codes.

* ``ChannelLayout`` — a BN input ``(N, C, *spatial)`` as the 3-D view ``(A, W, B)`` the kernels
  take (``(N, C, H·W)`` contiguous; ``(N·H·W / k, k·C, 1)`` channels_last, k copies of the channels
  side by side), and back; ``r`` rows per block of its channel sums;
* ``colsum``, ``tile`` — per-column sums of such a view (in blocks of ``r`` rows), and
  per-channel vectors tiled to its ``k`` copies;
* ``split_bytes`` / ``join_bytes`` — integer-valued floats as byte planes (what BN keeps of x̂);
* ``pack_mask`` / ``unpack_mask`` — a bool mask as bits (what a ReLU keeps).

Plain PyTorch, used inside the ``@fused`` kernels of ``wageubn.nn.fused`` (which re-exports the
public names).
"""

from __future__ import annotations

import torch

__all__ = [
    "ChannelLayout",
    "colsum",
    "join_bytes",
    "pack_mask",
    "split_bytes",
    "tile",
    "unpack_mask",
]

_WIDE = 256  # channels_last rows are widened to about this many elements
_BLOCK = 32  # rows per block of the channels_last channel sums


class ChannelLayout:
    """How a BN input ``(N, C, *spatial)`` is seen by the kernels (see the module docstring):
    ``view3`` gives the 3-D view (copying into the layout if needed), ``back`` the inverse.
    Other layouts than contiguous and channels_last are made contiguous."""

    def __init__(self, x: torch.Tensor) -> None:
        self.shape = x.shape
        self.channels = x.shape[1]
        self.per_channel = x.numel() // max(x.shape[1], 1)
        self.channels_last = (
            x.dim() == 4
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        )
        k = 1
        if self.channels_last:
            while k * 2 * self.channels <= _WIDE and self.per_channel % (k * 2) == 0:
                k *= 2
        self.k = k  # copies of the channel vector per row
        # rows summed per block by the channel sums (``colsum``): a reduction over the long
        # outer axis runs as blocks of r rows in parallel, then a short sum over the blocks
        rows = self.per_channel // k if self.channels_last else 1
        r = 1
        while r < _BLOCK and rows % (r * 2) == 0 and rows >= 4 * r * 2:
            r *= 2
        self.r = r

    def view3(self, t: torch.Tensor) -> torch.Tensor:
        n, c = self.shape[0], self.channels
        if self.channels_last:
            rows = t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
            return rows.reshape(-1, self.k * c, 1).detach()
        return t.contiguous().view(n, c, -1).detach()

    def back(self, y3: torch.Tensor) -> torch.Tensor:
        """A kernel's 3-D output as a tensor of ``self.shape`` in this layout (detached from the
        3-D view, so autograd treats a Function's output as its own tensor, not a view)."""
        if self.channels_last:
            n, c, h, w = self.shape
            return y3.view(n, h, w, c).permute(0, 3, 1, 2).detach()
        return y3.view(self.shape).detach()


def colsum(v: torch.Tensor, r: int) -> torch.Tensor:
    """Per-column sums of a 3-D view ``(A, W, B)`` over ``A`` and ``B``; with ``r > 1`` (``B = 1``,
    ``A`` a multiple of ``r``) as sums of blocks of ``r`` rows, then over the blocks: a fixed
    order, the same eager and compiled, that a compiled kernel runs block-parallel."""
    if r == 1:
        return v.sum((0, 2))
    return v.view(-1, r, v.shape[1]).sum(1).sum(0)


def tile(v: torch.Tensor, k: int) -> torch.Tensor:
    return v if k == 1 else v.repeat(k)


def split_bytes(n: torch.Tensor, planes: int) -> tuple[torch.Tensor, ...]:
    """Integer-valued floats ``n`` (``|n| < 2^(8·planes − 1)``) as byte planes: ``planes − 1``
    uint8 low bytes, then an int8 top byte (exact float arithmetic: every step is a power of two
    or an integer below 2^24). Byte planes rather than int16: they vectorize in the kernels."""
    out = []
    for _ in range(planes - 1):
        q = torch.floor(n * (1.0 / 256))
        out.append((n - q * 256).to(torch.uint8))
        n = q
    out.append(n.to(torch.int8))
    return tuple(out)


def join_bytes(parts: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
    """The inverse of ``split_bytes``."""
    n = parts[-1].to(dtype)
    for p in reversed(parts[:-1]):
        n = n * 256 + p.to(dtype)
    return n


_SHIFTS = (0, 1, 2, 3, 4, 5, 6, 7)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A 1-D bool tensor whose length is a multiple of 8, as uint8 (8 elements a byte)."""
    bits = mask.view(-1, 8).to(torch.uint8)
    shifts = torch.tensor(_SHIFTS, dtype=torch.uint8, device=mask.device)
    return (bits << shifts).sum(1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` elements of a packed mask as bool."""
    shifts = torch.tensor(_SHIFTS, dtype=torch.uint8, device=packed.device)
    return ((packed.view(-1, 1) >> shifts) & 1).view(-1)[:n].to(torch.bool)
