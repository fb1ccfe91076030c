"""The Python API's arguments checked as the command line checks its options (torch-free).

`gradfilter.select(..., count=True)`, a number where a path goes, `limit=-1`: each is the same
one-line GradfilterError the command line gives, not a TypeError from deep inside or, worse, a
run that quietly reads `True` as 1.
"""

from __future__ import annotations

import numbers
import os

from .errors import GradfilterError


def _shown(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def whole_number(value: object, option: str, minimum: int | None = None) -> int:
    """`value` as an int: a whole number that is not a bool, at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise GradfilterError(f"{option} must be a whole number, got {_shown(value)}")
    if minimum is not None and value < minimum:
        raise GradfilterError(f"{option} must be at least {minimum}, got {value}")
    return int(value)


def real_number(value: object, option: str) -> float:
    """`value` as a float: a real number that is not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise GradfilterError(f"{option} must be a number, got {_shown(value)}")
    return float(value)


def path_or_name(value: object, what: str) -> str | os.PathLike:
    """`value` if it is a path (a string or a Path)."""
    if not isinstance(value, str | os.PathLike):
        raise GradfilterError(f"{what} must be a path (a string or a Path), got "
                              f"{_shown(value)}")
    return value
