"""Layer 0: plumbing that every layer above may use and that imports nothing of wageubn.

* ``errors``  — exceptions shared across layers (``UsageError``: a user's mistake the CLI prints
  as one line with exit status 2);
* ``observe`` — the observation taps of the quantizer call sites (diagnostics, golden tensors);
* ``roles``   — which parameters of a quantized layer the optimizer quantizes, and the live set of
  quantized layers (``QuantModule``);
* ``version`` — the package version, for run files written by the layers above.

See docs/ARCHITECTURE.md for the layers and the direction imports go.
"""

from .errors import UsageError
from .version import __version__

__all__ = ["UsageError", "__version__"]
