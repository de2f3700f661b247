"""`Batches`: a resumable, deterministic batch stream over any data set, and `derive_seed`, the
one source of its randomness.

Determinism contract (docs/data.md, "Determinism and resume"):

* Everything random is derived from one integer ``seed`` by hashing a key with it
  (`derive_seed`), never from torch's global RNG:
  - the order of epoch ``e`` is ``torch.randperm(N)`` drawn from a generator seeded with
    ``derive_seed(seed, e, "order")``;
  - the augmentation of batch ``b`` of epoch ``e`` of an in-memory data set is drawn from a
    generator seeded with ``derive_seed(seed, e, b, "augment")``;
  - the augmentation of sample ``i`` in epoch ``e`` of a per-file data set (imagefolder) is drawn
    from a generator seeded with ``derive_seed(seed, e, "sample", i)``, so it does not depend on
    ``num_workers`` or on which worker decodes it.
* ``state_dict() == {"epoch", "position", "seed"}`` names the next batch to be produced: batch
  ``position`` of epoch ``epoch``. Restoring it with ``load_state_dict`` on a fresh `Batches`
  yields the same remaining batches, bit for bit, as the uninterrupted stream would have.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

# re-exported: the data sets' shared plumbing lived here before it had modules of its own
from .files import CorruptDataError, DatasetNotFoundError, load_pickle, read_gzip
from .inmemory import InMemoryDataset

__all__ = [
    "Batches",
    "CorruptDataError",
    "DatasetNotFoundError",
    "InMemoryDataset",
    "derive_seed",
    "load_pickle",
    "read_gzip",
]


def derive_seed(*keys: int | str) -> int:
    """A 63-bit seed from ``keys``, stable across runs, platforms and Python versions (BLAKE2b)."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _SeededSamples(Dataset):
    """Wraps a data set with ``get(index, generator=)``: item ``(i, seed)`` decodes sample ``i``
    with a generator seeded ``seed``, so augmentation is independent of workers and their order."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        return self.dataset.get(index, generator=_generator(seed))


def _seed_from(generator: torch.Generator | int | None, needs_randomness: bool) -> int:
    if isinstance(generator, torch.Generator):
        return generator.initial_seed()
    if isinstance(generator, int) and not isinstance(generator, bool):
        if generator < 0:
            raise ValueError(f"Batches: generator seed must be >= 0, got {generator}")
        return generator
    if generator is None:
        if needs_randomness:
            raise ValueError(
                "Batches: shuffle or augmentation needs randomness; pass "
                "generator=torch.Generator().manual_seed(SEED) or an int seed"
            )
        return 0
    raise TypeError(
        f"Batches: generator must be a torch.Generator, an int seed or None, "
        f"got {type(generator).__name__}"
    )


class Batches:
    """Iterable over ``(x, y)`` batches of ``dataset``: resumable mid-epoch and deterministic.

    ``generator`` (a torch.Generator — only its ``initial_seed()`` is used, its state is never
    advanced — or an int seed) fixes every draw; see the module docstring for the contract.
    ``shard=(rank, world)``: data-parallel training; ``batch_size`` is the global batch and each
    process gets its contiguous ``batch_size / world`` slice of every global batch.
    Iterating yields the rest of the current epoch, from batch ``position``, then moves to the next
    epoch. ``len(batches)`` is the number of batches per epoch. In-memory data sets (with ``batch``)
    are gathered on the calling thread; others go through a torch DataLoader with ``num_workers``.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | int | None,
        drop_last: bool = False,
        num_workers: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"Batches: batch_size must be a positive int, got {batch_size!r}")
        rank, world = shard
        if not (
            isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world
        ):
            raise ValueError(
                f"Batches: shard must be (rank, world) with 0 <= rank < world, got {shard!r}"
            )
        if batch_size % world:
            raise ValueError(
                f"Batches: the global batch {batch_size} does not split evenly over {world} "
                f"processes; use a multiple of {world}"
            )
        self.shard = (rank, world)
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"Batches: num_workers must be an int >= 0, got {num_workers!r}")
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last, self.num_workers = bool(shuffle), bool(drop_last), num_workers
        self.num_samples = len(dataset)  # type: ignore[arg-type]
        if len(self) == 0:
            raise ValueError(
                f"Batches: {self.num_samples} samples make no batch of {batch_size} "
                f"with drop_last={drop_last}"
            )
        augments = bool(getattr(dataset, "augment", False))
        self.seed = _seed_from(generator, self.shuffle or augments)
        self.epoch = 0
        self.position = 0  # batches of `epoch` already produced

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch; a no-op for the current epoch, so that
        ``for e in range(start, n): batches.set_epoch(e)`` keeps a restored mid-epoch position."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"Batches.set_epoch: epoch must be an int >= 0, got {epoch!r}")
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position", "seed"}`` of the next batch (after an epoch: of the next)."""
        if self.position >= len(self):
            return {"epoch": self.epoch + 1, "position": 0, "seed": self.seed}
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state`` (from `state_dict`); the seed in ``state`` replaces this one's."""
        if set(state) != {"epoch", "position", "seed"}:
            raise ValueError(
                f"Batches.load_state_dict: expected keys epoch, position, seed; got {sorted(state)}"
            )
        epoch, position, seed = (int(state[k]) for k in ("epoch", "position", "seed"))
        if epoch < 0 or seed < 0 or not 0 <= position <= len(self):
            raise ValueError(
                f"Batches.load_state_dict: {dict(state)} is out of range for "
                f"{len(self)} batches per epoch"
            )
        self.epoch, self.position, self.seed = epoch, position, seed

    def order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch``: int64 (N,)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        return torch.randperm(
            self.num_samples, generator=_generator(derive_seed(self.seed, epoch, "order"))
        )

    def _batch_indices(self, order: torch.Tensor, b: int) -> torch.Tensor:
        """Global batch ``b`` of ``order``; with ``shard=(rank, world)`` this process's contiguous
        ``1/world`` of it (every process draws the same order, so the shards partition the batch)."""
        batch = order[b * self.batch_size : (b + 1) * self.batch_size]
        rank, world = self.shard
        if world == 1:
            return batch
        per = -(-batch.numel() // world)
        return batch[rank * per : (rank + 1) * per]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, order = self.epoch, self.order(self.epoch)
        if hasattr(self.dataset, "batch"):
            stream = self._in_memory(epoch, order)
        else:
            stream = self._data_loader(epoch, order)
        for b, xy in stream:
            if self.epoch != epoch:  # set_epoch/load_state_dict during iteration: stop this stream
                return
            self.position = b + 1  # counted before the consumer sees it: state_dict() = next batch
            yield xy
        if self.epoch == epoch and self.position >= len(self):
            self.epoch, self.position = epoch + 1, 0

    def _in_memory(self, epoch: int, order: torch.Tensor) -> Iterator[tuple[int, Any]]:
        for b in range(self.position, len(self)):
            g = _generator(derive_seed(self.seed, epoch, b, "augment"))
            yield b, self.dataset.batch(self._batch_indices(order, b), generator=g)  # type: ignore[attr-defined]

    def _data_loader(self, epoch: int, order: torch.Tensor) -> Iterator[tuple[int, Any]]:
        start = self.position
        plan = [self._batch_indices(order, b).tolist() for b in range(start, len(self))]
        if hasattr(self.dataset, "get"):
            dataset: Dataset = _SeededSamples(self.dataset)
            plan = [
                [(i, derive_seed(self.seed, epoch, "sample", i)) for i in batch] for batch in plan
            ]
            loader_generator = None
        else:  # a plain Dataset: its own randomness is seeded per worker from this generator
            dataset = self.dataset
            loader_generator = _generator(derive_seed(self.seed, epoch, start, "workers"))
        loader = DataLoader(
            dataset, batch_sampler=plan, num_workers=self.num_workers, generator=loader_generator
        )
        try:
            yield from enumerate(loader, start=start)
        except CorruptDataError as exc:
            raise CorruptDataError(_worker_message(exc)) from None


def _worker_message(exc: BaseException) -> str:
    """The original one-line message of an exception that a DataLoader worker raised: the main
    process re-raises it with the worker's whole traceback as its text."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    for prefix in (f"{type(exc).__module__}.{type(exc).__qualname__}: ", f"{type(exc).__name__}: "):
        if last.startswith(prefix):
            return last[len(prefix) :]
    return last
