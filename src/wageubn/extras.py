"""Optional dependencies (the extras of ``pyproject.toml``): import one, or say how to install it.

=============  ===============  ===========================================================
module         extra            needed by
=============  ===============  ===========================================================
matplotlib     ``plot``         ``wageubn plot``, ``wageubn inspect`` heat maps, ``profile --plot``
safetensors    ``export``       ``wageubn export`` / ``predict`` / ``dump-step``, ``wageubn.deploy``
tensorboard    ``tensorboard``  ``train.tensorboard: true`` (checked when the config loads)
=============  ===============  ===========================================================
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the ``pip install`` that adds it."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``import module``; raises `MissingExtraError` naming ``feature`` and
    ``pip install "torch-wageubn[extra]"`` when it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.partition(".")[0]
        broken = "" if exc.name in (module, top) else f" (importing it failed: {exc})"
        raise MissingExtraError(
            f'{feature} needs {top}, which is not installed{broken}: pip install "torch-wageubn[{extra}]"',
            name=exc.name,
        ) from exc
