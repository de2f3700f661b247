"""What the writer (``export``) and the reader (``runtime``) of an integer model agree on: the
file's format marker and version, and the error for a file that is not what a caller expects.

The format itself — tensors, graph metadata — is described in ``wageubn.deploy.export`` and
docs/deploy.md. The reader imports this module, never the writer (which needs ``wageubn.nn``,
``convert`` and ``torch.fx``): running an exported model loads none of them.
"""

from __future__ import annotations

__all__ = ["FORMAT", "VERSION", "DeployError"]

FORMAT = "wageubn-integer-model"
VERSION = 1


class DeployError(ValueError):
    """An export or golden-tensor file is missing, corrupt, or not what the caller expects."""
