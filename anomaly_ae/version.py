"""The package version, in a module that imports nothing (everything may depend on it)."""

__version__ = "0.1.0"
