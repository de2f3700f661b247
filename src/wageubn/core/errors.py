"""Exceptions shared by several layers, defined below all of them so none imports upward."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit status 2.

    Raised by ``wageubn.cli`` and by the subcommand modules of the layers above it
    (``wageubn.deploy.command``, ``wageubn.profile.command``, ...), which therefore need not
    import the CLI."""
