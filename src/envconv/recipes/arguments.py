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


def finite_float(text: str) -> float:
    """A finite decimal number (``0.5``, ``-2``, ``1e-3``; not nan, inf or a number beyond float's range)."""
    value = float(text) if _FLOAT.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite decimal number, got {text!r}")
    return value


def _in_range(parse, valid, rule: str, name: str):
    """``parse`` followed by the check ``valid(value)``, refusing with ``expected <rule>``."""
    def check(text: str):
        value = parse(text)
        if not valid(value):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}")
        return value

    check.__name__, check.__doc__ = name, f"{parse.__doc__.split(' (')[0]}: {rule}."
    return check


positive_int = _in_range(integer, lambda v: v >= 1, "a positive whole number", "positive_int")
non_negative_int = _in_range(integer, lambda v: v >= 0, "a whole number of at least 0", "non_negative_int")
positive_float = _in_range(finite_float, lambda v: v > 0, "a number above 0", "positive_float")
non_negative_float = _in_range(finite_float, lambda v: v >= 0, "a number of at least 0", "non_negative_float")
