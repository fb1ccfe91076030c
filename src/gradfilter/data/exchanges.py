"""Conversations cut into their prompt-answer exchanges: every user turn followed directly by an
assistant turn becomes one single-turn record, in file order (the demo's data, and the
benchmarks' ShareGPT pools)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GradfilterError
from .conversations import Turn, detect_format, to_turns
from .readers import ReadReport, iter_records
from .sources import resolve_source

# ShareGPT V3 splits a long conversation into records with ids `<id>_0`, `<id>_1`, ...; a
# chunk after the first starts in the middle of the conversation.
_CHUNK_ID = re.compile(r"^(?P<base>.+)_(?P<n>\d+)$")
# An exchange's origin (`Exchange.origin`): `<conversation id or record number>#<turn>`.
_ORIGIN = re.compile(r"^(?P<conversation>.+)#\d+$")


@dataclass(frozen=True)
class Exchange:
    prompt: str
    answer: str
    origin: str  # "<conversation id or record number>#<turn>"

    def as_alpaca(self) -> dict[str, str]:
        return {"instruction": self.prompt, "input": "", "output": self.answer,
                "source": self.origin}


@dataclass
class ExchangeReport:
    """What a pass over a file met besides its exchanges: the reader's warnings (a file cut
    off mid-record) and, for openings, how many continuation chunks it passed over."""

    read: ReadReport = field(default_factory=ReadReport)
    continuation_chunks: int = 0

    def lines(self) -> list[str]:
        chunks = ([f"{self.continuation_chunks} continuation chunk(s) of split conversations "
                   "(ids <id>_<n>, n > 0) passed over: they do not open a conversation"]
                  if self.continuation_chunks else [])
        return [*self.read.warnings, *chunks]


def exchanges(path: str | Path, max_prompt_chars: int = 400, max_answer_chars: int | None = None,
              min_answer_chars: int = 20, openings_only: bool = False,
              report: ExchangeReport | None = None) -> Iterator[Exchange]:
    """The exchanges of `path` (streamed) whose prompt and answer lengths are within bounds,
    each distinct exchange once; records the reader cannot read or validate are passed over
    (they are not data to learn from). `openings_only`: only each conversation's first
    exchange, the one whose prompt needs no earlier turn to make sense; a later chunk of a
    conversation split into several records (`ContinuationRule`) opens nothing."""
    source = resolve_source(path)
    report = report if report is not None else ExchangeReport()
    continuation = ContinuationRule()
    fmt, seen = None, set()
    for record in iter_records(source, report.read, skip_bad_records=True):
        if record.error is not None:
            continue
        if openings_only and continuation.passes_over(record.data.get("id")):
            report.continuation_chunks += 1
            continue
        fmt = fmt or detect_format(record, source)
        try:
            turns = to_turns(record, fmt, source)
        except GradfilterError:
            continue
        for k in _answer_positions(turns, openings_only):
            prompt, answer = turns[k - 1].text.strip(), turns[k].text.strip()
            if (turns[k - 1].role != "user" or turns[k].role != "assistant" or not prompt
                    or len(prompt) > max_prompt_chars or len(answer) < min_answer_chars
                    or (max_answer_chars is not None and len(answer) > max_answer_chars)
                    or (prompt, answer) in seen):
                continue
            seen.add((prompt, answer))
            yield Exchange(prompt, answer, f"{record.data.get('id', record.index)}#{k}")


class ContinuationRule:
    """Tells the later chunks of split conversations: a record whose id is `<base>_<n>` with
    n > 0 is a continuation when `<base>_0` came earlier, or when the file has already shown
    itself chunked (a `<base>_0` followed by its `<base>_1`) and this base's first chunk is
    missing. Ids of another shape, and numbered ids with no `_0` (`item_1`, `item_2`), are
    openings."""

    def __init__(self) -> None:
        self.openers: set[str] = set()
        self.chunked = False

    def passes_over(self, record_id: object) -> bool:
        match = _CHUNK_ID.match(record_id) if isinstance(record_id, str) else None
        if match is None:
            return False
        base, n = match["base"], int(match["n"])
        if n == 0:
            self.openers.add(base)
            return False
        self.chunked = self.chunked or base in self.openers
        return self.chunked


def _answer_positions(turns: list[Turn], openings_only: bool) -> range:
    """Where an exchange's answer may stand: after any turn, or (openings only) right after the
    conversation's first user turn."""
    if not openings_only:
        return range(1, len(turns))
    first = next((i for i, turn in enumerate(turns) if turn.role == "user"), len(turns))
    return range(first + 1, min(first + 2, len(turns)))


def is_exchange_origin(value: object) -> bool:
    """Whether `value` reads as an `Exchange.origin` (`<conversation>#<turn>`)."""
    return isinstance(value, str) and _ORIGIN.match(value) is not None


def conversation_ids(values: Sequence[object]) -> list[str | None]:
    """The conversation each record's id or origin names (None where it has none): an
    exchange origin's `#<turn>` removed and, where the values show split conversations (a
    `<base>_0` beside a `<base>_<n>`, n > 0, as `ContinuationRule` tells them), the chunk
    number too, so that every chunk and exchange of one conversation has one id."""
    bare = [None if v is None else _ORIGIN.sub(r"\g<conversation>", str(v)) for v in values]
    chunks = [None if v is None else _CHUNK_ID.match(v) for v in bare]
    openers = {m["base"] for m in chunks if m is not None and int(m["n"]) == 0}
    split = any(m is not None and int(m["n"]) > 0 and m["base"] in openers for m in chunks)
    return [m["base"] if split and m is not None else v for v, m in zip(bare, chunks, strict=True)]
