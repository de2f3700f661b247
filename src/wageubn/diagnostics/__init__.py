"""Quantization diagnostics: per-layer statistics of W, A, G, E, U and BN during training."""

from .inspect import heatmaps, load_rows, summarize
from .recorder import Diagnostics
from .stats import quantizer_stats

__all__ = ["Diagnostics", "heatmaps", "load_rows", "quantizer_stats", "summarize"]
