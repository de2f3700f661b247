"""``Diagnostics``: collect quantizer statistics every N steps and write them to JSONL.

>>> diag = Diagnostics(model, every=100, path=run_dir / "diagnostics.jsonl")
>>> for step, (x, y) in enumerate(batches):
...     with diag.step(step):          # records only when step % every == 0
...         loss = F.cross_entropy(model(x), y); loss.backward(); optimizer.step()

One JSON object per (step, layer, role): ``{"step", "layer", "layer_index", "role", "kind",
"bits", "numel", "exponent", "saturation", "underflow", "distinct", ...}`` (see
``stats.quantizer_stats``). ``layer`` is always a module's path and ``layer_index`` its position in
the network (``model.named_modules()`` order). Roles: W, A, E1, E2 (conv/linear/ReLU), bn_mean,
bn_std, bn_xhat, bn_gamma, bn_beta (BN), and the optimizer's G, U, momentum — of a conv/linear
weight as they are, of another parameter qualified by it: ``G(bn_gamma)``, ``U(bn_beta)``,
``momentum(bias)``. Off-steps cost one global lookup per quantizer call; with no ``Diagnostics``
active, nothing at all.

With ``sink``, each recorded step also goes to ``sink(step, rows, histograms)`` with
``histograms = {role: CodeHistogram}`` (the codes of every layer of the role added up): the
trainer sends them to TensorBoard.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch import nn

from .. import nn as qnn
from ..core.observe import set_recorder
from ..nn import QuantBatchNorm2d, QuantGroupNorm, QuantLayerNorm
from .stats import CodeHistogram, code_histogram, quantizer_stats

__all__ = ["Diagnostics"]

# every quantized layer of wageubn.nn (conv, linear, norms, activations, attention ...)
_QUANT = tuple(getattr(qnn, n) for n in qnn.__all__ if n.startswith("Quant"))

Sink = Callable[[int, list[dict[str, Any]], dict[str, CodeHistogram]], None]


def _qualifier(module: nn.Module, pname: str) -> str | None:
    """How the optimizer's roles of parameter ``pname`` are qualified (None: not at all)."""
    if isinstance(module, QuantBatchNorm2d | QuantLayerNorm | QuantGroupNorm):
        return {"weight": "bn_gamma", "bias": "bn_beta"}.get(pname, pname)
    return None if pname == "weight" else pname


class Diagnostics:
    """Per-layer, per-role quantizer statistics of ``model`` (and its optimizer) every ``every`` steps."""

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int,
        path: str | os.PathLike | None = None,
        sink: Sink | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Diagnostics: every must be a positive int, got {every!r}")
        self.every = every
        self.path = Path(path) if path is not None else None
        self.sink = sink
        # id(module or parameter) -> (layer path, network position, role qualifier)
        self.names: dict[int, tuple[str, int, str | None]] = {}
        for index, (name, mod) in enumerate(model.named_modules()):
            if isinstance(mod, _QUANT):
                self.names[id(mod)] = (name, index, None)
                for pname, p in mod.named_parameters(recurse=False):
                    self.names[id(p)] = (name, index, _qualifier(mod, pname))
        self.rows: list[dict[str, Any]] = []
        self.histograms: dict[str, CodeHistogram] = {}
        self._step: int | None = None

    def observer_for(self, owner: object):
        if self._step is None:
            return None
        entry = self.names.get(id(owner))
        if entry is None:
            return None
        name, index, qualifier = entry
        step = self._step

        def observe(role, before, after, kind, bits, **extra):
            role = f"{role}({qualifier})" if qualifier else role
            stats = quantizer_stats(role.partition("(")[0], before, after, kind, bits, **extra)
            self.rows.append({"step": step, "layer": name, "layer_index": index, "role": role,
                              "kind": kind, "bits": bits, **stats})  # fmt: skip
            if self.sink is not None:
                self._count_codes(role, before, after, kind, bits, extra.get("dr"))

        return observe

    def _count_codes(self, role, before, after, kind, bits, dr) -> None:
        hist = code_histogram(before, after, kind, bits, dr=dr)
        key = role
        held = self.histograms.get(key)
        if held is not None and (held.limit, held.width) != (hist.limit, hist.width):
            key = f"{role} {kind}"  # e.g. int8 A: ReLU codes (Q) and conv input codes (fit)
            held = self.histograms.get(key)
        if held is None:
            self.histograms[key] = hist
        else:
            held.add(hist)

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
        first = len(self.rows)
        try:
            yield True
        finally:
            self._step = None
            set_recorder(previous)
        if self.sink is not None:
            self.sink(step, self.rows[first:], self.histograms)
            self.histograms = {}
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
