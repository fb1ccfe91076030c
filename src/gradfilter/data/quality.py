"""Records that read fine but say less than they seem to (no model here): a JSON object with a
key twice (the reader keeps the last value), an empty reply, and exact copies of one record.
`inspect` counts and names them; `score` and `run` report them in the summary and the run
record. They are scored like any other record.
"""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .conversations import Turn, answering_turns

# `"key":` where the quote is not escaped: one per key of every object in a record's text (a
# string holding `":` unescaped is impossible; an escaped one is skipped by the look-behind).
_KEY = re.compile(r'(?<!\\)"\s*:')
MOSTLY = 0.5  # a share of one record's copies above which the dataset is "mostly copies"


def repeated_keys(raw: str | None, data: dict[str, Any]) -> list[str]:
    """The keys that appear twice in one JSON object of the record's text (the reader kept
    the last value of each), [] for none or an Arrow row. Parsed again only where the text
    has more keys than the record read."""
    if raw is None or len(_KEY.findall(raw)) <= _count_keys(data):
        return []
    found: list[str] = []

    def check(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        found.extend(key for k, key in enumerate(keys) if key in keys[:k] and key not in found)
        return dict(pairs)

    json.loads(raw, object_pairs_hook=check)
    return found


def _count_keys(value: Any) -> int:
    if isinstance(value, dict):
        return len(value) + sum(_count_keys(item) for item in value.values())
    if isinstance(value, list):
        return sum(_count_keys(item) for item in value)
    return 0


def repeated_keys_problem(where: str, keys: list[str]) -> str:
    shown = ", ".join(repr(key) for key in keys)
    return (f"{where}: duplicate key {shown} in one JSON object (only the last value is read; "
            "the record is scored)")


def empty_replies(turns: Sequence[Turn]) -> list[int]:
    """Positions of the answering turns whose text is empty or blank."""
    return [k for k in answering_turns(turns) if not turns[k].text.strip()]


def empty_reply_problem(where: str, positions: list[int], n_turns: int) -> str:
    return (f"{where}: empty reply (turn {positions[0] + 1} of {n_turns}; scored: only its "
            "end-of-turn tokens carry loss)")


@dataclass(frozen=True)
class Copies:
    """Records whose turns repeat an earlier record's exactly."""

    records: int  # records that repeat an earlier one
    most_copied: int | None  # the index of the record repeated most
    count: int  # how many records are that one (itself included)
    total: int

    @property
    def mostly(self) -> bool:
        return self.total > 1 and self.count > MOSTLY * self.total

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "most_copied": self.most_copied, "count": self.count}

    def line(self) -> str:
        return (f"{copies_of_earlier(self.records)}; the most repeated, record "
                f"{self.most_copied}, is {self.count} of {self.total} "
                f"({self.count / self.total:.0%})")


def records(n: int, one: str = "", many: str = "") -> str:
    """'1 record is' / '3 records are': a count of records, with a verb that agrees."""
    words = ("record", one) if n == 1 else ("records", many)
    return " ".join((str(n), *(word for word in words if word)))


def copies_of_earlier(n: int) -> str:
    """'1 record is an exact copy of an earlier record' / '3 records are exact copies ...'."""
    return (f"{records(n, 'is', 'are')} {'an exact copy' if n == 1 else 'exact copies'} of an "
            "earlier record")


class CopyCounter:
    """An 8-byte hash of each record's turns (never the records themselves)."""

    def __init__(self) -> None:
        self.indices, self.hashes = array("q"), array("q")

    def add(self, index: int, turns: Sequence[Turn]) -> None:
        digest = hashlib.blake2b(digest_size=8)
        for turn in turns:
            digest.update(f"{turn.role}\x1f{turn.text}\x1e".encode("utf-8", "surrogatepass"))
        self.indices.append(index)
        self.hashes.append(int.from_bytes(digest.digest(), "little", signed=True))

    def copies(self, total: int) -> Copies:
        hashes = np.asarray(self.hashes, dtype=np.int64)
        if not len(hashes):
            return Copies(0, None, 0, total)
        _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
        top = int(np.argmax(counts))
        return Copies(len(hashes) - len(first), int(self.indices[first[top]]), int(counts[top]),
                      total)
