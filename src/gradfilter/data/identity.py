"""Which data a statistics table was scored on: every record's stable ID and content hash, and
the data's fingerprint (no model here; streaming: one record at a time).

- A record's content hash is the SHA-256 of its canonical JSON: the record as read, keys
  sorted, no spaces, text as UTF-8 (not escaped). So the same records in a JSON array, in JSON
  Lines or gzip-compressed hash alike, whatever their key order or formatting. A place the
  reader could not read (kept with --skip-bad-records) hashes its source text.
- A record's ID (`record_id`) is its own `id` field (a string or an integer) where no earlier
  record has that id, else `sha256:` and the first 16 hex digits of its content hash. Together
  with its position (`index`) it names one record of the data.
- The data's fingerprint is the SHA-256 of the records' content hashes in order: other records,
  edited ones, one more or one less, or the same records reordered, give another fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .readers import Record

ID_FIELD = "id"
HASH_PREFIX = "sha256:"
SHORT_HEX = 16  # hex digits of a content hash kept per record (64 bits)


def canonical_json(data: Any) -> bytes:
    """`data` as canonical JSON bytes (keys sorted, no spaces, UTF-8). A value JSON has no
    form for (Parquet's bytes, dates, decimals) is written as its Python repr."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=repr)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate, if a reader kept one


def content_digest(record: Record) -> bytes:
    """The SHA-256 of a record's canonical JSON (of its source text where it is unreadable)."""
    if record.error is not None:
        payload = b"unreadable\x00" + (record.raw or record.error).encode("utf-8",
                                                                          "surrogatepass")
    else:
        payload = canonical_json(record.data)
    return hashlib.sha256(payload).digest()


def short_hash(digest: bytes) -> str:
    return digest.hex()[:SHORT_HEX]


@dataclass
class Identities:
    """Record IDs, short content hashes and the fingerprint of records seen in order."""

    ids: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    _seen_ids: set[str] = field(default_factory=set, repr=False)
    _fingerprint: Any = field(default_factory=hashlib.sha256, repr=False)

    def add(self, record: Record) -> tuple[str, str]:
        """(record ID, short content hash) of the next record; it joins the fingerprint."""
        digest = content_digest(record)
        self._fingerprint.update(digest)
        record_id = self._own_id(record) or HASH_PREFIX + short_hash(digest)
        self.ids.append(record_id)
        self.hashes.append(short_hash(digest))
        return record_id, short_hash(digest)

    def _own_id(self, record: Record) -> str | None:
        value = own_id(record)
        if value is None or value in self._seen_ids:
            return None  # a repeated id names no single record: the content hash does
        self._seen_ids.add(value)
        return value

    @property
    def fingerprint(self) -> str:
        return HASH_PREFIX + self._fingerprint.hexdigest()

    def __len__(self) -> int:
        return len(self.ids)


def own_id(record: Record) -> str | None:
    """The record's `id` field as a string, where it is a non-empty string or an integer."""
    value = record.data.get(ID_FIELD) if record.error is None else None
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def identities(records: Iterable[Record]) -> Identities:
    """The IDs, hashes and fingerprint of `records` (in order)."""
    found = Identities()
    for record in records:
        found.add(record)
    return found
