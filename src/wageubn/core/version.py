"""The package version (``wageubn.__version__``), importable without loading the package root."""

__version__ = "0.1.0"
