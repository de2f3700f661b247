"""The quantized Momentum SGD optimizer (docs/WAGEUBN.md §3) and its learning-rate helpers."""

from .qsgd import QSGD, quantized_lr

__all__ = ["QSGD", "quantized_lr"]
