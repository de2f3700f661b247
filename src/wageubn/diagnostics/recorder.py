"""``Diagnostics``: collect quantizer statistics every N steps and write them to JSONL.

>>> diag = Diagnostics(model, optimizer, every=100, path=run_dir / "diagnostics.jsonl")
>>> for step, (x, y) in enumerate(batches):
...     with diag.step(step):          # records only when step % every == 0
...         loss = F.cross_entropy(model(x), y); loss.backward(); optimizer.step()

One JSON object per (step, layer, role): ``{"step", "layer", "role", "kind", "bits", "numel",
"exponent", "saturation", "underflow", "distinct", ...}`` (see ``stats.quantizer_stats``). Roles:
W, A, E1, E2 (layers), bn_mean, bn_std, bn_xhat, bn_gamma, bn_beta (BN), G, U, momentum (the
optimizer, named by the layer that owns the parameter). Off-steps cost one global lookup per
quantizer call; with no ``Diagnostics`` active, nothing at all.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from ..nn import QuantBatchNorm2d, QuantConv2d, QuantLinear, QuantReLU
from ..nn.observe import set_recorder
from .stats import quantizer_stats

__all__ = ["Diagnostics"]

_QUANT = (QuantConv2d, QuantLinear, QuantBatchNorm2d, QuantReLU)


class Diagnostics:
    """Per-layer, per-role quantizer statistics of ``model`` (and its optimizer) every ``every`` steps."""

    def __init__(
        self, model: nn.Module, *, every: int, path: str | os.PathLike | None = None
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Diagnostics: every must be a positive int, got {every!r}")
        self.every = every
        self.path = Path(path) if path is not None else None
        self.names: dict[int, str] = {}
        for name, mod in model.named_modules():
            if isinstance(mod, _QUANT):
                self.names[id(mod)] = name
                for pname, p in mod.named_parameters(recurse=False):
                    conv_weight = pname == "weight" and isinstance(mod, (QuantConv2d, QuantLinear))
                    self.names[id(p)] = name if conv_weight else f"{name}.{pname}"
        self.rows: list[dict[str, Any]] = []
        self._step: int | None = None

    def observer_for(self, owner: object):
        if self._step is None:
            return None
        name = self.names.get(id(owner))
        if name is None:
            return None
        step = self._step

        def observe(role, before, after, kind, bits, **extra):
            stats = quantizer_stats(role, before, after, kind, bits, **extra)
            self.rows.append({"step": step, "layer": name, "role": role, "kind": kind,
                              "bits": bits, **stats})  # fmt: skip

        return observe

    @contextlib.contextmanager
    def step(self, step: int) -> Iterator[bool]:
        """Record during this block if ``step % every == 0``; yields whether it records.

        Off-steps install nothing: the layers see no recorder at all.
        """
        if step % self.every != 0:
            yield False
            return
        previous = set_recorder(self)
        self._step = step
        try:
            yield True
        finally:
            self._step = None
            set_recorder(previous)
        self.flush()

    def flush(self) -> None:
        """Append the collected rows to ``path`` (one JSON object per line) and clear them."""
        if self.path is None or not self.rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for row in self.rows:
                f.write(json.dumps(row) + "\n")
            f.flush()
        self.rows.clear()
