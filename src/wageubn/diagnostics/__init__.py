"""Quantization diagnostics: per-layer statistics of W, A, G, E, U and BN during training."""

from .inspect import detail_map, load_rows, overview_map, select, summarize
from .recorder import Diagnostics
from .stats import quantizer_stats

__all__ = [
    "Diagnostics",
    "detail_map",
    "load_rows",
    "overview_map",
    "quantizer_stats",
    "select",
    "summarize",
]
