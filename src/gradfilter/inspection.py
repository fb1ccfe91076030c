"""`gradfilter inspect`: what a dataset holds and every problem in it, without a model.

Streams the file once; memory holds counters and lengths, never the records.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import formats
from .errors import GradfilterError
from .formats import Format, ReadReport

PERCENTILES = (0, 10, 50, 90, 99, 100)


@dataclass
class Inspection:
    path: Path
    container: str
    format: str
    records: int = 0
    roles: Counter = field(default_factory=Counter)
    turns_per_record: list[int] = field(default_factory=list)
    response_chars: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def percentiles(self, values: list[int]) -> dict[int, int]:
        if not values:
            return {}
        points = np.percentile(np.asarray(values), PERCENTILES, method="nearest")
        return dict(zip(PERCENTILES, (int(v) for v in points), strict=True))


def inspect_dataset(path: str | Path, fmt: Format | None = None,
                    fields: dict[str, str] | None = None) -> Inspection:
    path = Path(path)
    report = ReadReport()
    seen_ids: dict[object, int] = {}
    result: Inspection | None = None
    for record in formats.iter_records(path, report):
        if result is None:
            fmt = fmt or formats.detect_format(record, path, fields)
            result = Inspection(path, formats.detect_container(path), fmt)
        result.records += 1
        _check_id(record, seen_ids, result, path)
        try:
            turns = formats.to_turns(record, result.format, path, fields)  # type: ignore[arg-type]
        except GradfilterError as exc:
            result.problems.append(str(exc))
            continue
        _count_turns(record.index, turns, result, path)
    if result is None:
        raise GradfilterError(f"{path}: the dataset holds no records")
    result.warnings = report.warnings
    return result


def _check_id(record, seen_ids: dict, result: Inspection, path: Path) -> None:
    record_id = record.data.get("id")
    if record_id is None or not isinstance(record_id, str | int):
        return
    if record_id in seen_ids:
        result.problems.append(
            f"{path}: record {record.index}: field 'id': duplicate of record "
            f"{seen_ids[record_id]} ({record_id!r})")
    else:
        seen_ids[record_id] = record.index


def _count_turns(index: int, turns: list[formats.Turn], result: Inspection, path: Path) -> None:
    result.turns_per_record.append(len(turns))
    result.roles.update(turn.role for turn in turns)
    answers = [turn for k, turn in enumerate(turns) if turn.role == "assistant" and k > 0]
    result.response_chars.extend(len(turn.text) for turn in answers)
    where = f"{path}: record {index}"
    if not turns:
        result.problems.append(f"{where}: empty conversation (not scored)")
    elif not answers:
        result.problems.append(f"{where}: no assistant turn after a prompt (not scored)")
    elif turns[-1].role != "assistant":
        result.problems.append(f"{where}: ends on a {turns[-1].role} turn (the tail is prompt "
                               "with no answer; it carries no loss)")
