"""Model registry and the float model definitions (``quantize_`` makes them WAGEUBN)."""

from . import preact_resnet, small_cnn  # noqa: F401  (registers the models)
from .registry import ModelInfo, create_model, list_models, model_info, register_model

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]
