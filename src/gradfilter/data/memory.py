"""Records held in memory (a notebook's data) as a `Dataset`: a list of dicts, a
`datasets.Dataset` or a pandas DataFrame, read as a file's records are (same formats, same
checks, same record IDs and fingerprint), named "<N records in memory>" in every message.

Neither pandas nor datasets is imported here: an object is recognised by what it offers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import GradfilterError
from .readers import Record
from .sources import Source


def is_in_memory(data: object) -> bool:
    """Whether `data` is records in memory rather than a path, a hub id or a read Dataset."""
    return isinstance(data, list | tuple) or _is_hf_dataset(data) or _is_data_frame(data)


def _is_hf_dataset(data: object) -> bool:
    return type(data).__module__.startswith("datasets") and hasattr(data, "to_list")


def _is_data_frame(data: object) -> bool:
    return type(data).__module__.startswith("pandas") and hasattr(data, "to_dict")


def rows_of(data: Any) -> list[dict]:
    """Plain Python dicts of `data`'s rows (a DataFrame's through Arrow: lists, not arrays)."""
    if _is_hf_dataset(data):
        if hasattr(data, "keys") and not hasattr(data, "features"):  # a DatasetDict
            raise GradfilterError(f"a DatasetDict with splits {list(data.keys())}: pass one "
                                  "split (e.g. data['train'])")
        return data.to_list()
    if _is_data_frame(data):
        import pyarrow as pa

        return pa.Table.from_pandas(data, preserve_index=False).to_pylist()
    if not isinstance(data, Sequence):
        raise GradfilterError(f"data must be a path, a list of dicts, a datasets.Dataset or a "
                              f"pandas DataFrame, got {type(data).__name__}")
    return list(data)


def in_memory_records(data: Any, limit: int | None = None) -> tuple[Source, list[Record]]:
    """`data`'s rows as records (the first `limit` if given) and the source naming them
    (`dataset.as_dataset` makes the Dataset); a row that is not a dict is a one-line error
    naming it."""
    rows = rows_of(data)
    if limit is not None:
        rows = rows[:limit]
    source = Source(f"<{len(rows)} records in memory>", "jsonl", None)
    records = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise GradfilterError(f"{source}: record {index} is a {type(row).__name__}, not a "
                                  "dict of fields")
        records.append(Record(index, None, dict(row)))
    return source, records
