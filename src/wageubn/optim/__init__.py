"""The quantized Momentum SGD optimizer (docs/WAGEUBN.md §3), its param groups by role and its
learning-rate helpers."""

from .groups import param_groups, parameter_roles
from .qsgd import QSGD, quantized_lr

__all__ = ["QSGD", "param_groups", "parameter_roles", "quantized_lr"]
