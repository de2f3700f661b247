"""Observation points for the quantization diagnostics and golden tensors (``wageubn.diagnostics``,
``wageubn.deploy.golden``).

Every quantizer call site in the layers and in ``QSGD`` asks ``tap(owner)`` for an observer. When
no diagnostics recorder is active — the normal case — that is one global lookup returning
``None`` and nothing else happens; when one is active and recording this step, the observer
receives ``(role, before, after, kind, bits, extra)`` and computes its statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

__all__ = ["Observer", "set_recorder", "tap"]


class Observer(Protocol):
    def __call__(
        self,
        role: str,
        before: torch.Tensor,
        after: torch.Tensor,
        kind: str,
        bits: int,
        **extra: Any,
    ) -> None: ...


class _Recorder(Protocol):
    def observer_for(self, owner: object) -> Observer | None: ...


_RECORDER: _Recorder | None = None


def set_recorder(recorder: _Recorder | None) -> _Recorder | None:
    """Install (or with ``None`` remove) the active recorder; returns the previous one."""
    global _RECORDER
    previous, _RECORDER = _RECORDER, recorder
    return previous


def tap(owner: object) -> Observer | None:
    """The observer for ``owner`` (a module or a parameter) this step, or ``None`` (the fast path)."""
    if _RECORDER is None:
        return None
    return _RECORDER.observer_for(owner)


def observed(
    fn: Callable[[torch.Tensor], torch.Tensor],
    observer: Observer | None,
    role: str,
    kind: str,
    bits: int,
    **extra: Any,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` itself when not observing; else ``fn`` that also reports ``(before, after)``."""
    if observer is None:
        return fn

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        y = fn(x)
        observer(role, x.detach(), y.detach(), kind, bits, **extra)
        return y

    return wrapped
