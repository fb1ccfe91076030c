"""Benchmark results rendered generically: every measure of a results dict as a table, an
interval as estimate [low, high], a difference marked * where its interval excludes zero; so a
results file with more keys than the page adapters know still shows them all."""

from __future__ import annotations

import math
from collections.abc import Callable

from .page import Html, table


def is_interval(value: object) -> bool:
    return isinstance(value, dict) and {"estimate", "low", "high"} <= value.keys()


def interval_text(value: dict, signed: bool = False) -> str:
    """estimate [low, high], `*` where a difference's interval excludes zero."""
    parts = [value.get("estimate"), value.get("low"), value.get("high")]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in parts):
        return "n/a"
    spec = "+.4g" if signed else ".4g"
    star = " *" if signed and (parts[1] > 0 or parts[2] < 0) else ""
    return f"{parts[0]:{spec}} [{parts[1]:{spec}}, {parts[2]:{spec}}]{star}"


def plain_cell(value: object, signed: bool = False) -> object:
    if is_interval(value):
        return Html(interval_text(value, signed))  # type: ignore[arg-type]
    if isinstance(value, dict | list):
        return None
    return "n/a" if value is None else value


def result_tables(rows: dict[str, dict], name: str, caption: str = "") -> list[Html]:
    """Rows of measures as tables: the row's own measures in one, each nested group (the
    differences to random, per budget, ...) in another; intervals as estimate [low, high],
    a difference's marked * where its interval excludes zero."""
    rows = {key: value for key, value in rows.items() if isinstance(value, dict)}
    own = _columns(rows, lambda v: not isinstance(v, dict | list) or is_interval(v))
    tables = []
    if own:
        tables.append(table([name, *own],
                            [[row, *[plain_cell(rows[row].get(c), _is_difference(c)) for c in own]]
                             for row in rows], caption=caption or None))
    nested = _columns(rows, lambda v: isinstance(v, dict) and not is_interval(v))
    for group in nested:
        inner = {row: rows[row].get(group) or {} for row in rows}
        columns = _columns(inner, lambda v: not isinstance(v, dict | list) or is_interval(v))
        if not columns:
            continue
        signed = _is_difference(group)
        tables.append(table([name, *columns],
                            [[row, *[plain_cell(inner[row].get(c), signed or _is_difference(c))
                                     for c in columns]]
                             for row in inner], caption=group.replace("_", " ")))
    return tables


def _is_difference(key: str) -> bool:
    """A measure that is a difference between two methods (its sign says which is ahead)."""
    return key.startswith("vs_") or "_vs_" in key or "difference" in key


def _columns(rows: dict[str, dict], keep: Callable[[object], bool]) -> list[str]:
    seen: dict[str, None] = {}
    for value in rows.values():
        for key, item in value.items():
            if keep(item):
                seen.setdefault(key, None)
    return list(seen)


def percent(budget: object) -> str:
    try:
        return f"{float(str(budget)):.0%}"
    except ValueError:
        return str(budget)


def interval_or_na(value: object) -> str:
    return interval_text(value) if is_interval(value) else "n/a"  # type: ignore[arg-type]


def interval_or_signed(value: object) -> Html | str:
    """A difference as estimate [low, high], * where it excludes zero; - where there is none."""
    if not is_interval(value):
        return "-"
    return Html(interval_text(value, signed=True))  # type: ignore[arg-type]
