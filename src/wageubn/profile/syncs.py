"""Counting host synchronizations: ops that read a device value on the host.

On a GPU each one stalls the host until the device has caught up (``.item()``, ``bool(tensor)``,
``nonzero``, ...); a WAGEUBN training step needs exactly one (QSGD's finite check)::

    with HostSyncs() as syncs:
        step()
    syncs.count

Counted with a ``TorchDispatchMode`` (the library's fused kernels run as their eager code under
it: a compiled kernel is one graph and cannot read the host either).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SYNC_OPS", "HostSyncs"]

SYNC_OPS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.item.default,
}


class HostSyncs(TorchDispatchMode):
    """A dispatch mode counting the host reads (``count``, and ``ops`` by op name)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in SYNC_OPS:
            self.count += 1
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))
