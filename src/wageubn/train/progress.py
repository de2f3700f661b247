"""Progress feedback, importable here as before; it lives in ``wageubn.core.progress`` so that
every layer's long loops (training, evaluation, ``predict``, ``profile``) share it."""

from ..core.progress import BarProgress, LogProgress, Progress, format_duration, progress_for

__all__ = ["BarProgress", "LogProgress", "Progress", "format_duration", "progress_for"]
