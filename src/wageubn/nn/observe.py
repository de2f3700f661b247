"""The observation taps, kept importable here; they live in ``wageubn.core.observe`` (layer 0), so
that the optimizer, the diagnostics and the golden tensors reach them without going through
``wageubn.nn``."""

from ..core.observe import Observer, observed, set_recorder, tap

__all__ = ["Observer", "observed", "set_recorder", "tap"]
