"""The one error type users see: a one-line message naming file, record and field."""

from __future__ import annotations


class GradfilterError(Exception):
    """A problem with the user's input or settings; the CLI prints it on one line and exits 2."""


def record_error(path: object, index: int, field: str | None, problem: str) -> GradfilterError:
    """Build the standard 'file: record N: field F: problem' error (N is 0-based)."""
    where = f"{path}: record {index}"
    if field:
        where += f": field '{field}'"
    return GradfilterError(f"{where}: {problem}")
