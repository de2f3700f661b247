"""Integer deployment: export, integer-only inference, golden tensors (docs/deploy.md).

* ``export_model(model_or_checkpoint, path)`` — one safetensors file: int8 weight codes with their
  exponents, the quantized BN parameters as integer codes, the graph as JSON metadata, the preset.
* ``IntegerModel.load(path)(images)`` — inference with integer tensor operations only, from raw
  uint8 pixels to integer logits.
* ``dump_step(model, batch, optimizer_config, path)`` / ``verify_dump(path)`` — one training step's
  W, A, E1, E2, G, U, momentum and BN quantities as integer codes (docs/golden-tensors.md).
"""

from .export import export_model, model_from_checkpoint
from .format import DeployError
from .golden import dump_step
from .runtime import IntegerLogits, IntegerModel
from .verify import verify_dump

__all__ = [
    "DeployError",
    "IntegerLogits",
    "IntegerModel",
    "dump_step",
    "export_model",
    "model_from_checkpoint",
    "verify_dump",
]
