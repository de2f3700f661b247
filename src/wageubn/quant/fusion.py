"""Fused kernels: the library's elementwise work compiled with ``torch.compile``, on by default.

A function decorated with ``@fused`` is plain PyTorch (eager) code. On its first call it is
compiled by ``torch.compile(fullgraph=True)`` into one kernel per loop (a reduction and an
elementwise pass, typically), with the tensors' sizes symbolic and every non-tensor argument (bit
widths, flags) a constant of that compiled variant; later calls of any shape reuse it. Inductor keeps the result in its on-disk cache, so a
second process starts in seconds.

The compiled and the eager version compute the same quantized values: every kernel here is
elementwise arithmetic that is exact or correctly rounded per element (powers of two, ``round``,
``clamp``, one IEEE division), and the reductions are either ``max`` (order-free) or sums
accumulated in float64 (docs/WAGEUBN.md §2, "reduction order"). Those float64 sums are added in
another order when compiled; rounded to float32 they almost always agree, but a float value fed
by them — BN's running statistics, the gradient reaching a float stem — can differ in its last
bit. So a run is reproduced bit for bit (``--resume`` included) under one fusion setting; tests
that compare across settings allow that last bit for float values (tests/test_fusion.py).

After the first call with given argument shapes, strides and dtypes, later calls with the same
ones skip ``torch.compile``'s frame evaluation and guards and call the compiled graph directly
(``wageubn.quant.replay``): the guards already passed for exactly these properties, and the
graph's inputs and outputs are mapped to the function's by identity on that first call. That saves tens of
microseconds a call, which a training step of a hundred kernel calls notices.

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
from typing import Any, TypeVar, cast, overload

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .replay import Capture, Replay

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


def _variant(args: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[int, ...]]:
    """What a compiled variant is specialized to, and which arguments stay its inputs.

    Tensors are inputs (their sizes symbolic; the key holds dtype, device type, rank and which
    sizes are 0 or 1); every
    other argument — a bit width, a flag, a dtype, None — is a constant of the variant, so the
    compiled code computes ``2^(k−1)`` once, not per element."""
    key: list[Any] = []
    inputs: list[int] = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            key.append(_tensor_key(a))
            inputs.append(i)
        elif isinstance(a, list) and all(isinstance(t, torch.Tensor) for t in a):
            key.append(("list", tuple(_tensor_key(t) for t in a)))
            inputs.append(i)
        else:
            key.append(("const", type(a), a))
    return tuple(key), tuple(inputs)


def _exact_key(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments' dtypes, devices, exact shapes and strides, and the constants; then which
    tensor arguments are one and the same tensor (None: all distinct), whether autocast is on,
    and whether every tensor is a plain one. Equal keys give equal ``_variant`` keys, and pass the
    same ``torch.compile`` guards (what ``Replay`` relies on)."""
    key: list[Any] = []
    ids: list[int] = []
    plain = True
    for a in args:
        if isinstance(a, torch.Tensor):
            key.append((a.dtype, a.device, a.shape, a.stride()))
            ids.append(id(a))
            plain = plain and type(a) in _PLAIN
        elif isinstance(a, list) and all(isinstance(t, torch.Tensor) for t in a):
            key.append(tuple((t.dtype, t.device, t.shape, t.stride()) for t in a))
            ids.extend(id(t) for t in a)
            plain = plain and all(type(t) in _PLAIN for t in a)
        else:
            key.append((type(a), a))
    alias = None if len(set(ids)) == len(ids) else tuple(ids.index(i) for i in ids)
    key.append((alias, torch.is_autocast_enabled("cpu"), torch.is_autocast_enabled("cuda"), plain))
    return tuple(key)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _tensor_key(t: torch.Tensor) -> tuple[Any, ...]:
    # sizes 0 and 1 are specialized by torch.compile whatever is marked dynamic: which dims have
    # them is part of the variant, so shapes that differ there do not recompile one another
    return (t.dtype, t.device.type, tuple(min(s, 2) for s in t.shape))


class _Fused:
    """See ``fused``."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any] | None = None) -> None:
        functools.update_wrapper(self, fn)
        self.eager = fn
        self._options = options
        # one compiled function per variant, each from its own copy of the code object, so that
        # each has its own dynamo cache (and recompile budget)
        self._variants: dict[tuple[Any, ...], Callable[..., Any]] = {}
        # exact shapes already run → (compiled variant, input positions, direct call or None): a
        # repeated call skips building the variant key and marking sizes dynamic (the variant
        # already is), and where it can, dynamo's frame evaluation (``Record.replay``)
        self._seen: dict[tuple[Any, ...], tuple[Callable[..., Any], tuple[int, ...], Replay]] = {}

    def __call__(self, *args: Any) -> Any:
        if torch.compiler.is_compiling():
            return self.eager(*args)  # traced into the caller's graph
        with torch.no_grad():  # kernels are never differentiated through
            if not _enabled or _broken is not None or is_in_torch_dispatch_mode():
                return self.eager(*args)
            return self._run_compiled(args)

    def _run_compiled(self, args: tuple[Any, ...]) -> Any:
        exact = _exact_key(args)
        hit = self._seen.get(exact)
        key: tuple[Any, ...] | None = None
        if hit is not None:  # these shapes ran before: the variant is compiled and dynamic
            fn, inputs, replay = hit
            if replay is not None:
                return replay(_inputs_of(args, inputs))
        else:
            key, inputs = _variant(args)
            known = self._variants.get(key)
            if known is not None:
                fn = known
            else:
                log.info("wageubn: compiling %s (first use; cached on disk)", self.eager.__name__)
                # dynamic=None: the bound constants stay constants; the tensors' sizes are
                # marked dynamic below, so one compilation serves every shape
                fn = self._variants[key] = Capture.compile(
                    _bind_constants(self.eager, args, inputs), self._options
                )
            for i in inputs:
                for member in args[i] if isinstance(args[i], list) else (args[i],):
                    for dim in range(member.dim()):
                        torch._dynamo.maybe_mark_dynamic(member, dim)
        try:
            tensors = _inputs_of(args, inputs)
            capture = getattr(fn, "_wageubn_capture", None)
            if hit is not None or capture is None or not exact[-1][-1]:
                out = fn(*tensors)
                self._seen[exact] = (fn, inputs, None)
                return out
            with capture.recording() as record:
                out = fn(*tensors)
            self._seen[exact] = (fn, inputs, record.replay(tensors, out))
            return out
        except _backend_errors() as err:
            _disable(f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}")
        except (
            torch._dynamo.exc.TorchDynamoException,
            torch._dynamo.exc.FailOnRecompileLimitHit,
        ) as err:
            # this variant cannot be compiled (e.g. its recompile budget is spent): it runs eager
            key = _variant(args)[0] if key is None else key
            log.warning("wageubn: %s runs unfused for %s (%s)", self.eager.__name__, key, err)
            self._variants[key] = _bind_constants(self.eager, args, inputs, fresh=False)
            self._seen.clear()
        return self.eager(*args)


def _inputs_of(args: tuple[Any, ...], inputs: tuple[int, ...]) -> list[Any]:
    return [args[i] for i in inputs]


# inductor's store-vs-recompute limits, raised (``@fused(recompute=True)``): recomputing a few
# elementwise steps inside each reduction loop instead of writing the intermediate tensor out (in
# float64) and reading it back — the BN backward's sums: 8.7 → 5.6 ms on 128×16×32×32 (2 threads)
_RECOMPUTE = {"realize_opcount_threshold": 1000, "realize_reads_threshold": 100}


def _bind_constants(
    fn: Callable[..., Any], args: tuple[Any, ...], inputs: tuple[int, ...], fresh: bool = True
) -> Callable[..., Any]:
    """``fn`` taking only the tensor arguments (positions ``inputs``), the others bound as they
    are in ``args``; with ``fresh``, built from new code objects, so that ``torch.compile`` gives
    this variant a cache (and recompile budget) of its own."""
    template = [None if i in inputs else a for i, a in enumerate(args)]  # no tensor kept
    if fresh:
        fn = _fresh_copy(fn)

    def call(*tensors: Any) -> Any:
        full = list(template)
        for i, t in zip(inputs, tensors, strict=True):
            full[i] = t
        return fn(*full)

    if not fresh:
        return call
    bound = _fresh_copy(call)
    bound._wageubn_locals = {"template": template}  # type: ignore[attr-defined]
    return bound


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


@overload
def fused(fn: F) -> F: ...
@overload
def fused(*, recompute: bool = ...) -> Callable[[F], F]: ...
def fused(fn: F | None = None, *, recompute: bool = False) -> F | Callable[[F], F]:
    """Run ``fn`` (tensors in, tensors out, no host reads) as one compiled kernel when possible.

    ``fn.eager`` is the uncompiled function. ``@fused(recompute=True)`` compiles with inductor's
    store-vs-recompute limits raised (``_RECOMPUTE``): for kernels whose elementwise steps feed
    several reductions, where writing the intermediates out costs more than recomputing them
    (measured on the BN kernels; not a global setting, as it trips inductor on other kernels)."""
    options = _RECOMPUTE if recompute else None
    if fn is None:
        return lambda f: cast(F, _Fused(f, options))
    return cast(F, _Fused(fn))
