"""Write a subset: the input's records at chosen indices, unchanged, streaming where it can.

The chosen indices come in output order (input order, or best score first). Where the input is
read again record by record (JSON and JSONL outputs), a subset in input order is written as the
records go by and memory holds only the index arrays; a subset in score order buffers only the
chosen records' text. A Parquet or Hugging Face input written to Parquet or a Hugging Face
directory is taken row by row from the input's own Arrow data with its schema (features); a
Parquet subset of a Parquet input in input order streams batch by batch. JSON and JSONL records
written to Parquet or a Hugging Face directory go in record batches (see `batched`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GradfilterError
from ..outputs import atomic_path
from .batched import write_records_as_arrow
from .readers import Record, arrow_batches
from .sources import ARROW_CONTAINERS, Container, Source


def write_subset(
    out: Path,
    source: Source,
    chosen: np.ndarray,
    container: Container,
    records: Callable[[], Iterable[Record]],
    *,
    n_records: int,
    score_field: str | None = None,
    scores: np.ndarray | None = None,
) -> None:
    """Write the records of `source` at `chosen` (output order) to `out` in `container`.

    `records()` gives the input's records in input order (called at most once, only where the
    subset is made from records rather than Arrow rows); `n_records` bounds the indices;
    `scores` (one per input record) go into each written record under `score_field`.
    """
    out = Path(out)
    chosen = np.asarray(chosen, dtype=np.int64)
    if score_field is not None and scores is None:
        raise ValueError("score_field needs scores")
    if container in ("json", "jsonl"):
        _write_text(out, records(), chosen, container, n_records, score_field, scores)
    elif source.container == "hf":
        _write_from_hf(out, source, chosen, container, score_field, scores)
    elif source.container == "parquet":
        _write_from_parquet(out, source, chosen, container, n_records, score_field, scores)
    else:  # JSON or JSONL records to Arrow, in record batches (see batched)
        write_records_as_arrow(
            out, records(), chosen, _ranks(chosen, n_records), container,
            lambda table, rows: _with_score(table, score_field,
                                            None if scores is None else scores[chosen[rows]]),
            lambda record: record_text(record, "jsonl", None, None))


def reads_records(source: Source, container: Container) -> bool:
    """Whether `write_subset` makes the subset from the `records()` stream (else from the
    input's own Arrow rows, never reading records)."""
    return container in ("json", "jsonl") or source.container not in ARROW_CONTAINERS


def _ranks(chosen: np.ndarray, n_records: int) -> np.ndarray:
    """rank[i] = position of record i in the output, -1 if it is not chosen."""
    if len(chosen) and (chosen.min() < 0 or chosen.max() >= n_records):
        raise ValueError("chosen indices out of range")
    rank = np.full(n_records, -1, dtype=np.int64)
    rank[chosen] = np.arange(len(chosen))
    return rank


def _in_input_order(chosen: np.ndarray) -> bool:
    return bool(np.all(np.diff(chosen) > 0))


def record_text(record: Record, container: Container, score_field: str | None,
                score: float | None) -> str:
    """A record as it goes out: its source text unless a score is added (or a multi-line record
    goes into JSONL: then it is re-serialised on one line)."""
    if record.error is not None:
        raise GradfilterError(f"{record.error}; the statistics table scores it, so it was not "
                              "made from this input")
    raw = record.raw
    fits = raw is not None and (container == "json" or not ("\n" in raw or "\r" in raw))
    if score_field is None and fits:
        return raw  # type: ignore[return-value]
    data = dict(record.data)
    if score_field is not None:
        data[score_field] = score
    return json.dumps(data, ensure_ascii=False, default=str)


class _TextSink:
    """A JSON array or JSON Lines body written one record at a time."""

    def __init__(self, handle, container: Container) -> None:
        self.handle, self.container, self.count = handle, container, 0

    def write(self, text: str) -> None:
        if self.container == "jsonl":
            self.handle.write(text + "\n")
        else:
            self.handle.write(("[\n" if self.count == 0 else ",\n") + text)
        self.count += 1

    def close(self) -> None:
        if self.container == "json":
            self.handle.write("\n]\n" if self.count else "[]\n")


def _write_text(out: Path, records: Iterable[Record], chosen: np.ndarray, container: Container,
                n_records: int, score_field: str | None, scores: np.ndarray | None) -> None:
    rank = _ranks(chosen, n_records)
    streaming = _in_input_order(chosen)
    held: list[str | None] = [] if streaming else [None] * len(chosen)
    opener: Any = gzip.open if out.name.endswith(".gz") else open
    with atomic_path(out) as tmp, opener(tmp, "wt", encoding="utf-8", newline="") as handle:
        sink = _TextSink(handle, container)
        for record in records:
            k = rank[record.index] if record.index < n_records else -1
            if k < 0:
                continue
            score = float(scores[record.index]) if scores is not None else None
            text = record_text(record, container, score_field, score)
            if streaming:
                sink.write(text)
            else:
                held[k] = text
        for text in held:
            if text is None:
                raise GradfilterError(f"{out}: a chosen record was not found in the input")
            sink.write(text)
        sink.close()


def write_rows(out: Path, rows: Iterable[dict], container: Container) -> int:
    """Write made rows (a record in another schema, an annotated record) in output order to
    `out` in `container`: JSON and JSON Lines one row at a time, Parquet and a Hugging Face
    directory from one table of them all. The rows written."""
    import pyarrow as pa

    out = Path(out)
    if container in ("json", "jsonl"):
        opener: Any = gzip.open if out.name.endswith(".gz") else open
        with atomic_path(out) as tmp, opener(tmp, "wt", encoding="utf-8", newline="") as handle:
            sink = _TextSink(handle, container)
            for row in rows:
                sink.write(json.dumps(row, ensure_ascii=False, default=str))
            sink.close()
        return sink.count
    held = list(rows)
    try:
        table = pa.Table.from_pylist(held)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise GradfilterError(f"{out}: the rows do not fit one Arrow schema ({exc}); write "
                              "JSON or JSONL (.json, .jsonl)") from None
    _write_arrow_table(out, table, container, np.arange(len(held)), None, None)
    return len(held)


def in_output_order(records: Iterable[Record], chosen: np.ndarray,
                    n_records: int) -> Iterable[Record]:
    """The chosen records in output order: as they pass where that is input order, else
    gathered (only they are held)."""
    chosen = np.asarray(chosen, dtype=np.int64)
    if not _in_input_order(chosen):
        return _gather(records, chosen, n_records)
    rank = _ranks(chosen, n_records)
    return (r for r in records if r.index < n_records and rank[r.index] >= 0)


def _gather(records: Iterable[Record], chosen: np.ndarray, n_records: int) -> list[Record]:
    """The chosen records, in output order (only they are held)."""
    rank = _ranks(chosen, n_records)
    held: list[Record | None] = [None] * len(chosen)
    for record in records:
        if record.index < n_records and rank[record.index] >= 0:
            held[rank[record.index]] = record
    missing = [int(chosen[k]) for k, r in enumerate(held) if r is None]
    if missing:
        raise GradfilterError(f"record {missing[0]} is chosen but not in the input")
    return held  # type: ignore[return-value]


def _with_score(table, score_field: str | None, values: np.ndarray | None):
    import pyarrow as pa

    if score_field is None:
        return table
    if score_field in table.column_names:
        table = table.drop_columns([score_field])
    return table.append_column(score_field, pa.array(values, type=pa.float64()))


def _write_arrow_table(out: Path, table, container: Container, chosen: np.ndarray,
                       score_field: str | None, scores: np.ndarray | None) -> None:
    """A table of the chosen rows (output order) to Parquet or a Hugging Face directory."""
    import pyarrow.parquet as pq

    table = _with_score(table, score_field, scores[chosen] if scores is not None else None)
    if container == "parquet":
        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)
    else:
        from .hf import dataset_from_table, save_dataset

        save_dataset(dataset_from_table(table), out)


def _write_from_hf(out: Path, source: Source, chosen: np.ndarray, container: Container,
                   score_field: str | None, scores: np.ndarray | None) -> None:
    """`Dataset.select(chosen)`: the input's rows, features and column order."""
    from .hf import hf_dataset, quiet_hf, save_dataset

    assert container in ARROW_CONTAINERS
    with quiet_hf():
        subset = hf_dataset(source).select(chosen.tolist())
        if score_field is not None:
            assert scores is not None
            if score_field in subset.column_names:
                subset = subset.remove_columns([score_field])
            subset = subset.add_column(score_field, scores[chosen].astype(np.float64).tolist())
        if container == "hf":
            save_dataset(subset, out)
            return
        with atomic_path(out) as tmp:
            subset.to_parquet(str(tmp))


def _write_from_parquet(out: Path, source: Source, chosen: np.ndarray, container: Container,
                        n_records: int, score_field: str | None,
                        scores: np.ndarray | None) -> None:
    """The input's Parquet rows with its schema; streamed batch by batch in input order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rank = _ranks(chosen, n_records)
    if container == "parquet" and _in_input_order(chosen):
        writer = None
        with atomic_path(out) as tmp:
            try:
                for offset, batch in _batches_within(source, n_records):
                    local = np.flatnonzero(rank[offset:offset + batch.num_rows] >= 0)
                    piece = _with_score(pa.Table.from_batches([batch.take(pa.array(local))]),
                                        score_field,
                                        scores[offset + local] if scores is not None else None)
                    if writer is None:
                        schema = _schema_of(source, score_field)
                        writer = pq.ParquetWriter(tmp, schema)
                    writer.write_table(piece)
                if writer is None:  # no rows in the input at all
                    writer = pq.ParquetWriter(tmp, _schema_of(source, score_field))
            finally:
                if writer is not None:
                    writer.close()
        return
    pieces, ranks = [], []
    for offset, batch in _batches_within(source, n_records):
        window = rank[offset:offset + batch.num_rows]
        local = np.flatnonzero(window >= 0)
        if len(local):
            pieces.append(pa.Table.from_batches([batch.take(pa.array(local))]))
            ranks.append(window[local])
    schema = pq.ParquetFile(source.path).schema_arrow
    table = pa.concat_tables(pieces) if pieces else schema.empty_table()
    order = np.argsort(np.concatenate(ranks)) if ranks else np.zeros(0, np.int64)
    _write_arrow_table(out, table.take(pa.array(order)), container, chosen, score_field, scores)


def _batches_within(source: Source, n_records: int):
    """The input's Arrow batches up to row `n_records` (a --limit)."""
    for offset, batch in arrow_batches(source):
        if offset >= n_records:
            return
        yield offset, batch.slice(0, n_records - offset)


def _schema_of(source: Source, score_field: str | None):
    """The input file's schema (its metadata included), with the score column if one is added."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.ParquetFile(source.path).schema_arrow
    if score_field is None:
        return schema
    if score_field in schema.names:
        schema = schema.remove(schema.get_field_index(score_field))
    return schema.append(pa.field(score_field, pa.float64()))
