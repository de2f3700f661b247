"""Reading data files safely, and the errors a data set raises about its files.

``read_gzip`` and ``load_pickle`` turn a truncated, corrupt or foreign file into a ``ValueError``
naming it; ``load_pickle`` unpickles only builtins and numpy arrays, so a data file cannot run
code when it is loaded. ``DatasetNotFoundError`` (files missing: the message says how to get them)
and ``CorruptDataError`` (one undecodable file, e.g. an image of an ImageFolder) are what the
trainer reports to the user.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path
from typing import Any, Protocol

__all__ = ["CorruptDataError", "DatasetNotFoundError", "load_pickle", "read_gzip"]


class Readable(Protocol):
    """A binary file open for reading (an open file, a ``gzip.GzipFile``, ``io.BytesIO``)."""

    def read(self, n: int = ..., /) -> bytes: ...

    def readline(self) -> bytes: ...


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not where we looked; the one-line message says how to get them."""


class CorruptDataError(ValueError):
    """A data file that cannot be decoded (e.g. one image of an ImageFolder); the one-line message
    names the file."""


def read_gzip(path: Path) -> bytes:
    """The decompressed bytes of ``path``; a truncated or non-gzip file is a ValueError."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(
            f"{path}: not a valid gzip file ({type(e).__name__}: {e}); delete it and get it again"
        ) from e


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    import _codecs

    allowed = {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar}
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        for name, obj in allowed.items():
            table[(module, name)] = obj
    return table


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only builtins and numpy arrays: a data file cannot run code when it is loaded."""

    def __init__(self, file: Readable, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 pickles (MNIST, CIFAR) hold str bytes
        self.path, self.table = path, _numpy_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.table[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self.path}: refusing to load {module}.{name}; only numpy arrays are allowed"
            ) from None


def load_pickle(file: Readable, path: Path) -> Any:
    """Unpickle a data file that holds only builtins and numpy arrays; anything else, or a
    truncated or corrupt stream, is a ValueError naming ``path``."""
    try:
        return _ArrayUnpickler(file, path).load()
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        zlib.error,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
    ) as e:
        raise ValueError(f"{path}: not a valid data pickle ({type(e).__name__}: {e})") from e
