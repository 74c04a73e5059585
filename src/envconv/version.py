"""The package version, in a module of its own so that every part of envconv can import it first."""

__version__ = "0.1.0"
