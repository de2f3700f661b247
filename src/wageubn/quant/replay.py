"""Replaying a compiled kernel without ``torch.compile``'s frame evaluation (``wageubn.quant.fusion``).

``Capture`` is a ``torch.compile`` backend that compiles with inductor (as ``backend="inductor"``
does) and remembers which graph a call ran, with which inputs, and what it returned. From one such
call, ``Record.replay`` builds a direct call of that graph: its inputs gathered from the
function's arguments by dynamo's own source names, its outputs mapped back by identity — or None
where that mapping is not certain (the caller then keeps the guarded call). The caller replays
only calls whose arguments have exactly the recorded shapes, strides, dtypes and aliasing, which
pass the same guards.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch

__all__ = ["Capture", "Record", "Replay"]


class Capture:
    """A ``torch.compile`` backend that compiles with inductor (as ``backend="inductor"`` does)
    and keeps every graph it compiled, so that ``recording`` can see which graph a call ran, with
    which inputs, and what it returned."""

    def __init__(self, options: dict[str, Any] | None) -> None:
        self.options = options
        self.local = threading.local()  # .record: the recording in progress on this thread
        self.frame_locals: dict[str, Any] = {}

    @staticmethod
    def compile(fn: Callable[..., Any], options: dict[str, Any] | None) -> Callable[..., Any]:
        capture = Capture(options)
        compiled = torch.compile(fn, fullgraph=True, dynamic=None, backend=capture)
        compiled._wageubn_capture = capture  # type: ignore[attr-defined]
        # the frame's other locals that dynamo may read graph inputs from (``_bind_constants``)
        capture.frame_locals = getattr(fn, "_wageubn_locals", {})
        return compiled

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        from torch._inductor.compile_fx import compile_fx

        compiled = cast(
            Callable[..., Any], compile_fx(gm, example_inputs, config_patches=self.options)
        )
        sources = [_source_name(node) for node in gm.graph.nodes if node.op == "placeholder"]

        def graph(*graph_args: Any) -> Any:
            record = getattr(self.local, "record", None)
            if record is None:
                return compiled(*graph_args)
            record.graph, record.sources, record.args = compiled, sources, graph_args
            record.outputs = compiled(*graph_args)
            return record.outputs

        return graph

    @contextlib.contextmanager
    def recording(self) -> Iterator[Record]:
        record = self.local.record = Record(self.frame_locals)
        try:
            yield record
        finally:
            self.local.record = None


class Record:
    """What one compiled call ran (see ``Capture``), and ``replay``: the same graph called
    directly, or None where the mapping is not certain."""

    graph: Callable[..., Any] | None = None
    sources: list[str | None] = []
    args: tuple[Any, ...] = ()
    outputs: Any = None

    def __init__(self, frame_locals: dict[str, Any]) -> None:
        self.frame_locals = frame_locals

    def replay(self, tensors: list[Any], out: Any) -> Replay:
        graph, sources, args, outputs = self.graph, self.sources, self.args, self.outputs
        self.args, self.outputs = (), None  # keep no tensor alive
        if graph is None or None in sources or not isinstance(outputs, (list, tuple)):
            return None
        try:  # the graph's inputs as expressions of the function's (dynamo's own source names)
            gather = eval(f"lambda L: ({''.join(f'{s}, ' for s in sources)})", {})  # noqa: S307
            again = gather({**self.frame_locals, "tensors": tensors})
        except Exception:  # an input this mapping cannot express: keep the guarded call
            return None
        if len(again) != len(args) or not all(
            a is b if isinstance(b, torch.Tensor) else type(a) is type(b) and a == b
            for a, b in zip(again, args, strict=True)
        ):
            return None
        flat_inputs = [t for a in tensors for t in (a if isinstance(a, list) else (a,))]
        results = out if isinstance(out, tuple) else (out,)
        plan: list[tuple[str, Any]] = []
        for r in results:
            if not isinstance(r, torch.Tensor):
                if r is not None:
                    return None
                plan.append(("const", None))
            elif (j := _index(outputs, r)) is not None:
                plan.append(("graph", j))
            elif (j := _index(flat_inputs, r)) is not None:
                plan.append(("input", j))
            else:
                return None
        single = not isinstance(out, tuple)
        frame_locals = self.frame_locals

        def run(now: list[Any]) -> Any:
            got = graph(*gather({**frame_locals, "tensors": now}))
            if single and plan[0][0] == "graph":
                return got[plan[0][1]]
            flat_now = None
            parts = []
            for kind, j in plan:
                if kind == "graph":
                    parts.append(got[j])
                elif kind == "input":
                    if flat_now is None:
                        flat_now = [t for a in now for t in (a if isinstance(a, list) else (a,))]
                    parts.append(flat_now[j])
                else:
                    parts.append(None)
            return parts[0] if single else tuple(parts)

        return run


Replay = Callable[[list[Any]], Any] | None


def _source_name(node: torch.fx.Node) -> str | None:
    """The Python expression (in the frame's locals ``L``) dynamo fed a graph input from."""
    arg = node.meta.get("grapharg")
    name = getattr(getattr(arg, "source", None), "name", None)
    name = name() if callable(name) else name  # a method in older torch, a property in newer
    return name if isinstance(name, str) else None


def _index(items: Any, t: torch.Tensor) -> int | None:
    return next((i for i, v in enumerate(items) if v is t), None)
