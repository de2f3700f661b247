"""Model registry and the float model definitions (``quantize_`` makes them WAGEUBN)."""

from . import preact_resnet, small_cnn  # noqa: F401  (registers the models)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
