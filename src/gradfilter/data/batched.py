"""JSON and JSON Lines records written as Parquet or a Hugging Face directory in record batches.

Arrow needs one schema for the whole output, and JSON records do not carry one: a field that
is null in the first thousand records may hold text later. So the chosen records go by once,
their text spilled to a temporary file beside the output (one line each) while their schema
is worked out batch by batch (`pyarrow.unify_schemas`, as `Table.from_pylist` over all of them
would find it); then they are read back in output order, a batch at a time, and written.
Memory holds one batch and 8 bytes per chosen record, whatever the ratio.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import GradfilterError
from ..outputs import (
    atomic_dir,
    atomic_path,
    is_write_error,
    make_parents,
    output_error,
    remove_made,
    temp_prefix,
    write_target,
)
from .readers import Record

BATCH_ROWS = 4096


def write_records_as_arrow(out: Path, records: Iterable[Record], chosen: np.ndarray,
                           rank: np.ndarray, container: str,
                           with_score: Callable[[Any, np.ndarray], Any],
                           record_text: Callable[[Record], str]) -> None:
    """The records at `chosen` (output order; `rank[i]` is record i's place, -1 if it is not
    chosen) to `out` as Parquet or a Hugging Face directory; `with_score(table, rows)` adds
    the score column of the output rows `rows`; `record_text` is a record's one-line JSON."""
    with _scratch(out, ".spill.tmp") as spill:
        offsets, schema = _spill(records, rank, chosen, spill, record_text, out)
        spill.flush()
        batches = (with_score(table, rows) for table, rows in
                   _read_back(spill, offsets, schema, out))
        if container == "parquet":
            _write_parquet(out, batches, with_score)
        else:
            _write_hf(out, batches, with_score)


@contextmanager
def _scratch(out: Path, suffix: str) -> Iterator[IO[bytes]]:
    """A temporary file beside `out` (its file system has the room the output needs), removed
    whatever happens."""
    target = write_target(out)
    made = make_parents(out, target)
    name = None
    try:
        with tempfile.NamedTemporaryFile(prefix=temp_prefix(target.name), suffix=suffix,
                                         dir=target.parent) as handle:
            name = handle.name
            yield handle
    except OSError as exc:
        remove_made(made)
        if name is None or is_write_error(exc, name):  # the spill's (a full disk): the output's
            raise output_error(out, exc) from exc
        raise
    except BaseException:
        remove_made(made)
        raise


def _spill(records: Iterable[Record], rank: np.ndarray, chosen: np.ndarray, spill: IO[bytes],
           record_text: Callable[[Record], str], out: Path) -> tuple[np.ndarray, Any]:
    """Write the chosen records' text to `spill`; their offsets there (by output place) and
    the schema that holds them all."""
    import pyarrow as pa

    offsets = np.full(len(chosen), -1, dtype=np.int64)
    schema, batch = None, []
    for record in records:
        k = rank[record.index] if record.index < len(rank) else -1
        if k < 0:
            continue
        offsets[k] = spill.tell()
        spill.write(record_text(record).encode("utf-8") + b"\n")
        batch.append(record.data)
        if len(batch) == BATCH_ROWS:
            schema = _unified(schema, batch, out)
            batch = []
    if batch:
        schema = _unified(schema, batch, out)
    missing = np.flatnonzero(offsets < 0)
    if len(missing):
        raise GradfilterError(f"record {int(chosen[missing[0]])} is chosen but not in the input")
    return offsets, schema if schema is not None else pa.schema([])


def _unified(schema: Any, rows: list[dict], out: Path) -> Any:
    import pyarrow as pa

    try:
        found = pa.Table.from_pylist(rows).schema
        return found if schema is None else pa.unify_schemas(
            [schema, found], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise _no_schema(out, exc) from None


def _no_schema(out: Path, exc: Exception) -> GradfilterError:
    return GradfilterError(f"{out}: the records do not fit one Arrow schema ({exc}); write "
                           "JSON or JSONL with --out-format")


def _read_back(spill: IO[bytes], offsets: np.ndarray, schema: Any,
               out: Path) -> Iterator[tuple[Any, np.ndarray]]:
    """(Arrow table, output places) of each batch of the spilled records, in output order."""
    import pyarrow as pa

    with open(spill.name, "rb") as handle:
        for start in range(0, len(offsets), BATCH_ROWS):
            rows = []
            for offset in offsets[start:start + BATCH_ROWS]:
                handle.seek(int(offset))
                rows.append(json.loads(handle.readline()))
            try:
                table = pa.Table.from_pylist(rows, schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
                raise _no_schema(out, exc) from None
            yield table, np.arange(start, start + len(rows))


def _first(batches: Iterator[Any], with_score: Callable[[Any, np.ndarray], Any]) -> Any:
    """The first batch, or an empty table (no record chosen)."""
    import pyarrow as pa

    first = next(batches, None)
    return first if first is not None else with_score(pa.Table.from_pylist([]),
                                                      np.zeros(0, np.int64))


def _write_parquet(out: Path, batches: Iterator[Any],
                   with_score: Callable[[Any, np.ndarray], Any]) -> None:
    import pyarrow.parquet as pq

    first = _first(batches, with_score)
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, first.schema) as writer:
        writer.write_table(first)
        for table in batches:
            writer.write_table(table)


def _write_hf(out: Path, batches: Iterator[Any],
              with_score: Callable[[Any, np.ndarray], Any]) -> None:
    """A `save_to_disk` directory written batch by batch: `datasets` lays out a one-row dataset
    of the features (its state.json and dataset_info.json name one data file), and all the
    batches are streamed into that data file in the Arrow stream format `datasets` reads, with the
    schema it writes (tests/test_quiet_cases.py loads it back). Where the layout is not one
    .arrow file, `datasets` copies the batches from a memory-mapped stream file instead
    (memory then grows with the subset: the mapped pages it reads)."""
    import datasets

    from .hf import quiet_hf

    first = _first(batches, with_score)
    schema = datasets.Features.from_arrow_schema(first.schema).arrow_schema
    with quiet_hf(), atomic_dir(out) as tmp:
        datasets.Dataset(first.slice(0, 1)).save_to_disk(str(tmp))  # (0 rows: no data file)
        files = json.loads((tmp / "state.json").read_text(encoding="utf-8"))["_data_files"]
        if len(files) == 1 and files[0]["filename"].endswith(".arrow"):
            _stream_into(tmp / files[0]["filename"], schema, _chain(first, batches))
            return  # (not loaded back to check: mapping it would double the peak memory)
        for entry in tmp.iterdir():  # not the layout expected: let datasets write it all
            os.unlink(entry)
        with _scratch(out, ".arrow.tmp") as stream:
            _stream_into(Path(stream.name), schema, _chain(first, batches))
            datasets.Dataset.from_file(stream.name).save_to_disk(str(tmp))


def _stream_into(path: Path, schema: Any, tables: Iterator[Any]) -> None:
    """The tables as an Arrow stream with `schema` in `path`."""
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for table in tables:
            writer.write_table(table.cast(schema))


def _chain(first: Any, batches: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from batches
