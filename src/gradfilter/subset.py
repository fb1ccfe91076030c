"""Selection from a statistics table, written as a subset of the input (no model here).

Only the table's scores are held in memory: the input is read again as a stream and the chosen
records written as they pass (see `writing`). This module imports neither torch nor a model,
so `gradfilter select` starts fast and small.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import formats
from .dataset import Dataset, resolve_format
from .errors import GradfilterError
from .formats import Format, ReadReport, Record
from .outputs import write_run_record
from .selection import Selection, select_top
from .table import load_scores, table_utility
from .writing import write_subset


@dataclass(frozen=True)
class Subset:
    """What `select_subset` wrote, and the few input records the caller asked to see."""

    selection: Selection
    source: formats.Source
    format: Format
    fields: dict[str, str]
    container: formats.Container
    records: dict[int, Record]  # the records at `remember`, by index
    report: ReadReport  # warnings and unreadable places met while reading the input

    def turns(self, record: Record) -> list[formats.Turn]:
        return formats.to_turns(record, self.format, self.source, self.fields)


def select(
    data: str | Path | Dataset,
    stats: str | Path | pa.Table | np.ndarray,
    out: str | Path,
    *,
    utility: str | None = None,
    ratio: float | None = None,
    count: int | None = None,
    order: str = "input",
    score_field: str | None = None,
    fmt: Format | None = None,
    limit: int | None = None,
    out_format: formats.Container | None = None,
    split: str | None = None,
    fields: dict[str, str] | None = None,
) -> Selection:
    """Write the top records of `data` by `utility` to `out`, unchanged, in the input's
    container unless `out_format` names another. `stats` is the statistics table (a Parquet
    path or a table), or the scores of `utility` themselves (one per record).

    Only the table's scores are held in memory: the input is read again as a stream and the
    chosen records written as they pass (`order="score"` holds the chosen ones only).
    """
    return select_subset(data, stats, out, utility=utility, ratio=ratio, count=count,
                         order=order, score_field=score_field, fmt=fmt, limit=limit,
                         out_format=out_format, split=split, fields=fields).selection


def select_subset(
    data: str | Path | Dataset,
    stats: str | Path | pa.Table | np.ndarray,
    out: str | Path,
    *,
    utility: str | None = None,
    ratio: float | None = None,
    count: int | None = None,
    order: str = "input",
    score_field: str | None = None,
    fmt: Format | None = None,
    limit: int | None = None,
    out_format: formats.Container | None = None,
    split: str | None = None,
    fields: dict[str, str] | None = None,
    remember: Iterable[int] = (),
) -> Subset:
    """`select`, also returning the format and the input records at `remember` (previews)."""
    start = time.perf_counter()
    utility = utility or table_utility(stats)
    scores = load_scores(stats, utility)
    selection = select_top(scores, ratio=ratio, count=count)
    chosen = selection.in_order(order)
    remember = {int(i) for i in remember}
    report = ReadReport()
    if isinstance(data, Dataset):
        source = data.source or formats.resolve_source(data.path)
        fmt, fields, report = data.format, data.fields, data.report
        _check_rows(len(scores), source, len(data.records))
        watch = _Watch(remember, None, source)
        records = partial(watch.stream, data.records)
        kept: dict[int, Record] | None = {
            i: data.records[i] for i in remember if i < len(data.records)}
    else:
        fields = fields or {}
        source = formats.resolve_source(data, split)
        fmt = resolve_format(_read(source, ReadReport(), limit), source, fmt, fields)
        if source.container in formats.ARROW_CONTAINERS:
            n_rows = formats.arrow_num_rows(source)
            _check_rows(len(scores), source, n_rows if limit is None else min(n_rows, limit))
        watch = _Watch(remember, len(scores), source)
        records = partial(watch.stream, _read(source, report, limit))
        kept = None
    container = out_format or source.container
    if container not in formats.CONTAINERS:
        raise GradfilterError(f"--out-format must be one of {list(formats.CONTAINERS)}")
    write_subset(Path(out), source, chosen, container, records, n_records=len(scores),
                 score_field=score_field, scores=scores if score_field else None)
    if kept is None:  # the records went by on their way to the writer, or were not read
        kept = watch.kept if watch.count else _take(source, remember, limit)
    write_run_record(Path(out), {
        "stage": "select",
        "data": str(source),
        "split": source.split,
        "stats": str(stats) if isinstance(stats, str | Path) else None,
        "records": len(scores),
        "utility": utility,
        "ratio": ratio,
        "count": count,
        "order": order,
        "out_format": container,
        "score_field": score_field,
        "selected": len(chosen),
        "requested": selection.requested,
        "nonfinite_scores": selection.n_nonfinite,
        "read_warnings": report.warnings,
        "unreadable_records": report.skipped,
        "wall_seconds": {"select": time.perf_counter() - start},
    })
    return Subset(selection, source, fmt, fields, container, kept, report)


def _read(source: formats.Source, report: ReadReport, limit: int | None) -> Iterator[Record]:
    """The input again, as a stream; unreadable places come as records with `error` (they are
    unscored in any table made from this input, so never chosen)."""
    return formats.iter_records(source, report, skip_bad_records=True, limit=limit)


def _take(source: formats.Source, indices: set[int], limit: int | None) -> dict[int, Record]:
    wanted = {i for i in indices if limit is None or i < limit}
    if not wanted:
        return {}
    if source.container in formats.ARROW_CONTAINERS:
        return formats.take_records(source, wanted)
    return {r.index: r for r in _read(source, ReadReport(), limit) if r.index in wanted}


def _mismatch(n_rows: int, source: formats.Source, n_records: int) -> GradfilterError:
    return GradfilterError(
        f"the statistics table has {n_rows} rows but {source} has "
        f"{n_records} records; score this file first"
    )


def _check_rows(n_rows: int, source: formats.Source, n_records: int) -> None:
    if n_rows != n_records:
        raise _mismatch(n_rows, source, n_records)


class _Watch:
    """Counts the records on their way to the writer and keeps the few asked for; at the end
    of the stream, a count that differs from the table's rows is an error (raised inside the
    writer, so no output is left)."""

    def __init__(self, remember: set[int], expected: int | None,
                 source: formats.Source) -> None:
        self.remember, self.expected, self.source = remember, expected, source
        self.count = 0
        self.kept: dict[int, Record] = {}

    def stream(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            self.count += 1
            if record.index in self.remember:
                self.kept[record.index] = record
            yield record
        if self.expected is not None and self.count != self.expected:
            raise _mismatch(self.expected, self.source, self.count)
