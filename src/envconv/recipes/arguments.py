"""Number types for the command line: decimal spellings only, finite, and in range.

Python's ``int()`` and ``float()`` accept more than a user means: ``int("3_3") == 33``,
``int("٣") == 3``, ``float("nan")``, ``float("1e999") == inf``. These types accept plain decimal
numbers (``-12``, ``0.5``, ``1e-3``) and name the option's rule otherwise.
"""

from __future__ import annotations

import argparse
import math
import re

__all__ = ["integer", "positive_int", "non_negative_int", "finite_float", "positive_float", "non_negative_float"]

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def integer(text: str) -> int:
    """A decimal integer (digits 0-9, an optional sign; no underscores, spaces or other scripts' digits)."""
    if not _INT.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected a whole number in decimal digits, got {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    """A decimal integer of at least 1."""
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """A decimal integer of at least 0."""
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """A finite decimal number (``0.5``, ``-2``, ``1e-3``; not nan, inf or a number beyond float's range)."""
    value = float(text) if _FLOAT.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite decimal number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite decimal number above 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite decimal number of at least 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text!r}")
    return value
