"""Fused kernels: the library's elementwise work compiled with ``torch.compile``, on by default.

A function decorated with ``@fused`` is plain PyTorch (eager) code. On its first call it is
compiled by ``torch.compile(fullgraph=True, dynamic=True)`` into one kernel per loop (a
reduction and an elementwise pass, typically), and every later call of any shape runs that
kernel. Inductor keeps the result in its on-disk cache, so a second process starts in seconds.

The compiled and the eager version compute the same values: every kernel here is elementwise
arithmetic that is exact or correctly rounded per element (powers of two, ``round``, ``clamp``,
one IEEE division), and the reductions are either ``max`` (order-free) or sums accumulated in
float64 (whose float32 rounding does not depend on the order in practice; see
docs/WAGEUBN.md §2, "reduction order").

Eager instead of compiled:

* ``set_fusion(False)`` / ``with fusion(False):`` / the environment variable ``WAGEUBN_FUSE=0``;
* inside ``torch.compile`` of the user's model (the outer compilation fuses across layers);
* while a ``TorchDispatchMode`` is active (``wageubn.profile`` counts the eager ops);
* where compilation is impossible (no C++ compiler, an unsupported platform): a one-line
  warning, once, and the library keeps working unfused.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

__all__ = ["fused", "fusion", "fusion_enabled", "set_fusion"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_enabled = os.environ.get("WAGEUBN_FUSE", "1").strip().lower() not in ("0", "false", "no", "off")
_broken: str | None = None  # why compilation failed here, once it has


def set_fusion(enabled: bool) -> bool:
    """Turn the compiled kernels on or off for this process; returns the previous setting."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"set_fusion: enabled must be True or False, got {enabled!r}")
    previous, _enabled = _enabled, enabled
    return previous


@contextlib.contextmanager
def fusion(enabled: bool) -> Iterator[None]:
    """``with fusion(False): ...`` runs the block with eager kernels (and restores the setting)."""
    previous = set_fusion(enabled)
    try:
        yield
    finally:
        set_fusion(previous)


def fusion_enabled() -> bool:
    """Whether ``@fused`` functions run compiled now (False after a failed compilation)."""
    return _enabled and _broken is None


def _backend_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean compilation cannot work in this process (no compiler, broken backend)."""
    errors: list[type[BaseException]] = [torch._dynamo.exc.BackendCompilerFailed]
    try:
        from torch._inductor import exc as inductor_exc
    except ImportError:  # pragma: no cover - every supported torch has it
        return tuple(errors)
    errors += [
        getattr(inductor_exc, name)
        for name in ("InductorError", "CppCompileError", "InvalidCxxCompiler")
        if hasattr(inductor_exc, name)
    ]
    return tuple(errors)


def _variant_key(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a compiled variant is specialized to: dtype, device type and rank of each tensor,
    which optional arguments are None. Sizes and integer arguments stay symbolic."""
    key: list[Any] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            key.append((a.dtype, a.device.type, a.dim()))
        else:
            key.append(None if a is None else type(a))
    return tuple(key)


class _Fused:
    """See ``fused``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        functools.update_wrapper(self, fn)
        self.eager = fn
        # one compiled function per variant, each from its own copy of the code object, so that
        # each has its own dynamo cache (and recompile budget)
        self._variants: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def __call__(self, *args: Any) -> Any:
        if torch.compiler.is_compiling():
            return self.eager(*args)  # traced into the caller's graph
        with torch.no_grad():  # kernels are never differentiated through
            if not _enabled or _broken is not None or is_in_torch_dispatch_mode():
                return self.eager(*args)
            return self._run_compiled(args)

    def _run_compiled(self, args: tuple[Any, ...]) -> Any:
        key = _variant_key(args)
        fn = self._variants.get(key)
        if fn is None:
            log.info("wageubn: compiling %s (first use; cached on disk)", self.eager.__name__)
            fn = self._variants[key] = torch.compile(
                _fresh_copy(self.eager), fullgraph=True, dynamic=True
            )
        try:
            return fn(*args)
        except _backend_errors() as err:
            _disable(f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}")
        except (
            torch._dynamo.exc.TorchDynamoException,
            torch._dynamo.exc.FailOnRecompileLimitHit,
        ) as err:
            # this variant cannot be compiled (e.g. its recompile budget is spent): it runs eager
            log.warning("wageubn: %s runs unfused for %s (%s)", self.eager.__name__, key, err)
            self._variants[key] = self.eager
        return self.eager(*args)


def _fresh_copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    clone = types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    clone.__kwdefaults__ = fn.__kwdefaults__
    return clone


def _disable(reason: str) -> None:
    global _broken
    _broken = reason
    warnings.warn(
        f"wageubn: torch.compile is not usable here ({reason}); the quantizers run unfused "
        "(correct, slower). Set WAGEUBN_FUSE=0 to skip the attempt.",
        RuntimeWarning,
        stacklevel=4,
    )


def fused(fn: F) -> F:
    """Run ``fn`` (tensors in, tensors out, no host reads) as one compiled kernel when possible.

    ``fn.eager`` is the uncompiled function."""
    return _Fused(fn)  # type: ignore[return-value]
