"""One streaming pass over the data for a page: per record its prompt and response length in
characters, its turns and its categorical fields (a source, a task, a language), and the full
text of the few records the page shows. Memory: about 24 bytes a record and the shown texts."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import conversations, readers, sources
from ..data.conversations import FIELD_NAMES, FORMATS, Format
from ..data.readers import ReadReport, Record
from ..errors import GradfilterError

MAX_VALUES = 20  # distinct values up to which a field counts as a category
MAX_VALUE_CHARS = 60
TEXT_LIMIT = 4000  # characters of a shown turn kept for the page


@dataclass(frozen=True)
class ShownTurn:
    role: str
    text: str  # cut to TEXT_LIMIT characters
    length: int  # the whole turn's


@dataclass(frozen=True)
class Example:
    """A record the page shows: its turns, or why it could not be read."""

    index: int
    turns: list[ShownTurn]
    error: str | None = None


@dataclass
class Category:
    """A field with few distinct values: each record's code into `values` (-1: absent)."""

    values: list[str]
    codes: np.ndarray


@dataclass
class RecordFacts:
    source: str
    format: str
    prompt_chars: np.ndarray  # float64, NaN where the record could not be read as turns
    response_chars: np.ndarray
    turns: np.ndarray
    categories: dict[str, Category]
    examples: dict[int, Example]
    unreadable: int = 0
    warnings: list[str] = field(default_factory=list)


class _Categories:
    """Scalar top-level fields, kept while they have at most MAX_VALUES distinct values."""

    def __init__(self, n: int, excluded: set[str]) -> None:
        self.n = n
        self.found: dict[str, dict[str, int]] = {}
        self.codes: dict[str, np.ndarray] = {}
        self.passed: set[str] = set(excluded)  # a format's own fields, and fields not kept

    def see(self, index: int, values: Iterable[tuple[str, object]]) -> None:
        for key, value in values:
            if key in self.passed:
                continue
            text = _category_value(value)
            known = self.found.setdefault(key, {})
            if text is None or (text not in known and len(known) >= MAX_VALUES):
                self.passed.add(key)
                self.found.pop(key, None)
                self.codes.pop(key, None)
                continue
            code = known.setdefault(text, len(known))
            if key not in self.codes:
                self.codes[key] = np.full(self.n, -1, dtype=np.int16)
            self.codes[key][index] = code

    def result(self) -> dict[str, Category]:
        """The fields with at least two values (one value says nothing about a selection)."""
        return {key: Category(list(values), self.codes[key])
                for key, values in self.found.items() if len(values) >= 2}


def _category_value(value: object) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and len(value) <= MAX_VALUE_CHARS:
        return value
    return None


def read_facts(data: str | Path, n_rows: int, shown: set[int], fmt: Format | None = None,
               fields: dict[str, str] | None = None, split: str | None = None,
               limit: int | None = None, check: Callable[[Record], None] | None = None
               ) -> RecordFacts:
    """Stream `data` once (the first `limit` records if given); it must hold `n_rows` records,
    one per row of the statistics table, as `select` requires. `check` sees every record
    read (the table's binding to its data)."""
    if fmt is not None and fmt not in FORMATS:
        raise GradfilterError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    fields = fields or {}
    source = sources.resolve_source(data, split)
    report = ReadReport()
    excluded = {fields.get(name, name) for name in FIELD_NAMES}
    pass_ = _Pass(n_rows, shown, excluded, fmt, fields, source)
    count = 0
    for record in readers.iter_records(source, report, skip_bad_records=True, limit=limit):
        if record.index >= n_rows:
            count = record.index + 1
            break
        pass_.see(record)
        if check is not None:
            check(record)
        count = record.index + 1
    if count != n_rows:
        raise GradfilterError(f"the statistics table has {n_rows} rows but {source} has "
                              f"{'more than ' if count > n_rows else ''}{count} records; give "
                              "the data the table was scored from (--data, and --limit or "
                              "--fields as it was read)")
    return pass_.facts(str(source), report.warnings)


class _Pass:
    def __init__(self, n: int, shown: set[int], excluded: set[str], fmt: Format | None,
                 fields: dict[str, str], source: sources.Source) -> None:
        self.shown, self.fmt, self.fields, self.source = shown, fmt, fields, source
        self.prompt = np.full(n, np.nan)
        self.response = np.full(n, np.nan)
        self.turns = np.full(n, np.nan)
        self.categories = _Categories(n, excluded)
        self.system = np.zeros(n, dtype=bool)  # a system prompt
        self.given = np.zeros(n, dtype=bool)  # Alpaca: a non-empty input
        self.examples: dict[int, Example] = {}
        self.unreadable = 0

    def see(self, record: Record) -> None:
        i = record.index
        if record.error is None and self.fmt is None:
            self.fmt = conversations.detect_format(record, self.source, self.fields)
        try:
            if self.fmt is None:
                raise GradfilterError(record.error or "unreadable")
            turns = conversations.to_turns(record, self.fmt, self.source, self.fields)
        except GradfilterError as exc:
            self.unreadable += 1
            if i in self.shown:
                self.examples[i] = Example(i, [], str(exc))
            return
        answers = conversations.answering_turns(turns)
        self.prompt[i] = sum(len(t.text) for t in turns if t.role != "assistant")
        self.response[i] = sum(len(turns[k].text) for k in answers)
        self.turns[i] = len(turns)
        self.categories.see(i, record.data.items())
        self.system[i] = turns[0].role == "system" if turns else False
        if self.fmt == "alpaca":
            self.given[i] = bool(record.data.get(self.fields.get("input", "input")))
        if i in self.shown:
            self.examples[i] = Example(i, [ShownTurn(t.role, t.text[:TEXT_LIMIT], len(t.text))
                                           for t in turns])

    def _derived(self) -> dict[str, Category]:
        """Categories every format has: a system prompt or not, and Alpaca's input or not (of
        the records read as turns; two values at least)."""
        read = np.isfinite(self.turns)
        found = {"system prompt": (self.system, ("no", "yes"))}
        if self.fmt == "alpaca":
            found["alpaca input"] = (self.given, ("empty", "given"))
        result = {}
        for name, (flag, values) in found.items():
            if flag[read].any() and not flag[read].all():
                codes = np.where(read, flag.astype(np.int16), np.int16(-1))
                result[name] = Category(list(values), codes)
        return result

    def facts(self, source: str, warnings: list[str]) -> RecordFacts:
        categories = {**self._derived(), **self.categories.result()}
        return RecordFacts(source, self.fmt or "unknown", self.prompt, self.response,
                           self.turns, categories, self.examples, self.unreadable, warnings)
