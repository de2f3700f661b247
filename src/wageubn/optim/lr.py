"""The quantized learning rate ``lr_q = QC(lr, k_LR)`` (docs/WAGEUBN.md §3): ``quantized_lr``
for a configured lr (0 for a non-zero lr is an error) and ``qc_lr``, the rounding itself, which
``QSGD.step`` applies to a scheduled lr (a scheduled lr that rounds to 0 only warns there).
"""

from __future__ import annotations

from ..config import WAGEUBNConfig

__all__ = ["qc_lr", "quantized_lr"]


def qc_lr(lr: float, bits: int) -> float:
    """``QC(lr, k)`` in Python floats (exact: ``lr·2^(k−1)`` is exact in a double, ``round`` is
    half-to-even, and the limit ``1 − 2^(1−k)`` is a double for k <= 53)."""
    limit = 1.0 - 2.0 ** (1 - bits)
    q = round(float(lr) * 2.0 ** (bits - 1)) * 2.0 ** (1 - bits)
    return max(-limit, min(limit, q))


def quantized_lr(lr: float, config: WAGEUBNConfig) -> float:
    """``QC(lr, k_LR)`` as a Python float; raises ``ValueError`` when a non-zero ``lr`` rounds to 0.

    This is the check for a configured (base) learning rate; a *scheduled* lr that decays to a
    value quantizing to 0 is not an error in ``QSGD.step`` (it warns once and applies no update).
    """
    if config.lr is None:
        return float(lr)
    q = qc_lr(lr, config.lr)
    if q == 0.0 and lr != 0:
        step = 2.0 ** (1 - config.lr)
        raise ValueError(
            f"lr={lr!r} quantizes to 0 with {config.lr} lr bits (step {step:g}); "
            f"use lr >= {step / 2:g} or more lr bits (WAGEUBNConfig(lr=...)); the released recipe "
            "decays the gradient range dr instead of the lr"
        )
    return q
