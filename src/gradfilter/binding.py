"""A statistics table belongs to its data: before a table's scores pick records, the data is
compared with what the table recorded of the data it was scored on (no model here).

`score` stores the data's fingerprint (metadata `data_fingerprint`) and every record's ID and
content hash (columns `record_id`, `record_hash`; see `data.identity`). Reading the data again,
record by record, `DataCheck` compares each record's content hash with the table's row at the
same position and, at the end, the fingerprints: other data, edited or reordered records are
refused in one line naming both fingerprints and the first record that differs, unless the user
allows it (`--allow-data-mismatch`: data edited on purpose). A table written before tables
recorded their data is used with a warning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .data.identity import HASH_PREFIX, content_digest, own_id, short_hash
from .data.readers import Record
from .errors import GradfilterError
from .table import DATA_FINGERPRINT, RECORD_HASH, RECORD_ID, open_table, table_meta

ALLOW_OPTION = "--allow-data-mismatch"
_SHOWN_HEX = 16


@dataclass(frozen=True)
class TableData:
    """What a statistics table recorded of the data it was scored on."""

    label: str
    fingerprint: str | None  # None: written before tables recorded their data
    hashes: np.ndarray  # uint64, one per row (empty where there is no fingerprint)
    read_ids: Callable[[], list[str]]  # the record_id column, read when a message needs it


def table_data(stats: str | Path | pa.Table, name: object = None) -> TableData:
    """The fingerprint and record hashes a table (a path, or a table in memory that `name`
    names) holds."""
    shown = name if name is not None or isinstance(stats, pa.Table) else stats
    label = "the statistics table" + (f" {shown}" if shown is not None else "")
    if isinstance(stats, pa.Table):
        table = stats

        def column(column_name: str) -> pa.Array:
            return table.column(column_name).combine_chunks()
    else:
        table_file = open_table(Path(stats))
        table = pa.Table.from_batches([], schema=table_file.schema_arrow)

        def column(column_name: str) -> pa.Array:
            return table_file.read(columns=[column_name]).column(0).combine_chunks()
    fingerprint = table_meta(table).get(DATA_FINGERPRINT)
    if fingerprint is None or RECORD_HASH not in table.column_names:
        return TableData(label, None, np.zeros(0, np.uint64), list)
    return TableData(label, str(fingerprint), _hash_values(column(RECORD_HASH)),
                     lambda: [str(v) for v in column(RECORD_ID).to_pylist()])


def _hash_values(hashes: pa.Array) -> np.ndarray:
    """The 16-hex-digit hashes as uint64 (8 bytes a record), read from the Arrow buffers (a
    list of a million Python strings would hold ~60 MB); a missing or malformed one as 0."""
    hashes = hashes.cast(pa.string()).fill_null("")
    offsets = np.frombuffer(hashes.buffers()[1], dtype=np.int32, count=len(hashes) + 1,
                            offset=hashes.offset * 4)
    if len(hashes) and np.all(np.diff(offsets) == 16):
        text = bytes(memoryview(hashes.buffers()[2])[offsets[0]:offsets[-1]])
        try:
            return np.frombuffer(bytes.fromhex(text.decode("ascii")), ">u8").astype(np.uint64)
        except (UnicodeDecodeError, ValueError):
            pass
    return np.array([_hash_value(h) for h in hashes.to_pylist()], dtype=np.uint64)


def _hash_value(text: str) -> int:
    try:
        return int(text, 16) if len(text) == 16 else 0
    except ValueError:
        return 0


class DataCheck:
    """Compares the records of the data, in order, with a table's record hashes."""

    def __init__(self, table: TableData, data_label: object, allow_mismatch: bool) -> None:
        self.table, self.data_label, self.allow = table, str(data_label), allow_mismatch
        self._digest = hashlib.sha256()
        self.count = 0
        self._first: tuple[int, str | None, str] | None = None  # (index, own id, short hash)
        self._outcome: dict[str, Any] | None = None

    def see(self, record: Record) -> None:
        digest = content_digest(record)
        self._digest.update(digest)
        self.count += 1
        if self._first is not None or self.table.fingerprint is None:
            return
        index = record.index
        if (index >= len(self.table.hashes)
                or int(self.table.hashes[index]) != int.from_bytes(digest[:8], "big")):
            self._first = (index, own_id(record), short_hash(digest))

    def see_all(self, records: Iterable[Record]) -> DataCheck:
        for record in records:
            self.see(record)
        return self

    @property
    def fingerprint(self) -> str:
        """The data's fingerprint (of the records seen so far)."""
        return HASH_PREFIX + self._digest.hexdigest()

    def finish(self) -> dict[str, Any]:
        """After the last record: the run record's entry (`data_warning` in it where the table
        cannot be checked or a mismatch is allowed); a mismatch not allowed is an error."""
        if self._outcome is None:
            self._outcome = self._outcome_now()
        return self._outcome

    def _outcome_now(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"data_fingerprint": self.fingerprint,
                                 "table_data_fingerprint": self.table.fingerprint}
        if self.table.fingerprint is None:
            entry.update(data_check="unchecked", data_warning=(
                f"{self.table.label} records no data fingerprint (it was written before "
                f"tables recorded their data), so it cannot be checked against "
                f"{self.data_label}; score again to bind it to its data"))
            return entry
        if self.table.fingerprint == self.fingerprint and self._first is None:
            return {**entry, "data_check": "match"}
        problem = (f"{self.table.label} was scored on other data than {self.data_label}: the "
                   f"table's data fingerprint is {_shown(self.table.fingerprint)}, "
                   f"{self.data_label}'s is {_shown(self.fingerprint)}; the first record that "
                   f"differs: {self._difference()}")
        if not self.allow:
            raise GradfilterError(f"{problem}; score the data again, or pass {ALLOW_OPTION} "
                                  "to use the table anyway (data edited on purpose)")
        return {**entry, "data_check": "mismatch allowed",
                "data_warning": f"{problem}; used anyway ({ALLOW_OPTION})"}

    def _difference(self) -> str:
        if self._first is None:  # 64-bit hashes all equal, the fingerprints not: a collision
            return "none found by the 64-bit record hashes"
        index, data_own, data_hash = self._first
        if index >= len(self.table.hashes):
            return f"record {index} (the table has {len(self.table.hashes)} rows)"
        table_ids = self.table.read_ids()
        table_id = table_ids[index]
        earlier = set(table_ids[:index])  # the records before it are the same in both
        data_id = (data_own if data_own is not None and data_own not in earlier
                   else HASH_PREFIX + data_hash)
        if data_id == table_id:
            return f"record {index} ({table_id!r}: its content changed)"
        elsewhere = np.flatnonzero(self.table.hashes == np.uint64(int(data_hash, 16)))
        moved = (f"; the data's record {index} is the table's record {int(elsewhere[0])}: "
                 "reordered?" if len(elsewhere) else "")
        return f"record {index} ({table_id!r} in the table, {data_id!r} in the data{moved})"


def _shown(fingerprint: str) -> str:
    return fingerprint[:len(HASH_PREFIX) + _SHOWN_HEX]


def check_table(stats: str | Path | pa.Table, records: Iterable[Record], data_label: object,
                allow_mismatch: bool = False, table_name: object = None) -> dict[str, Any]:
    """`DataCheck` over records in memory: the run record's entry (`data_warning` in it where
    the table cannot be checked or a mismatch is allowed); a mismatch not allowed is an error."""
    check = DataCheck(table_data(stats, table_name), data_label, allow_mismatch)
    return check.see_all(records).finish()


def require_table_of(stats: str | Path | pa.Table, table_name: object, records: Iterable[Record],
                     data_label: object, allow_mismatch: bool, log: Callable[[str], Any]) -> None:
    """A benchmark's check of a table it was given against the data it pairs it with: a
    mismatch not allowed is an error; a warning (unchecked, or allowed) goes to `log`."""
    outcome = check_table(stats, records, data_label, allow_mismatch, table_name)
    if outcome.get("data_warning"):
        log(f"warning: {outcome['data_warning']}")
