"""A dataset read into memory: its records, format and where they came from (no model here)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GradfilterError
from . import conversations, quality, readers, sources
from .conversations import Format
from .readers import ReadReport, Record


@dataclass(frozen=True)
class Dataset:
    path: Path  # the data as the user named it (a hub id reads as a relative path)
    records: list[Record]
    format: Format
    container: sources.Container
    report: ReadReport
    fields: dict[str, str]
    source: sources.Source | None = None  # where the records came from, to write a subset

    def turns(self, record: Record) -> list[conversations.Turn]:
        return conversations.to_turns(record, self.format, self.path, self.fields)


def read_dataset(path: str | Path, fmt: Format | None = None, limit: int | None = None,
                 fields: dict[str, str] | None = None, *, split: str | None = None,
                 skip_bad_records: bool = False) -> Dataset:
    """All records of `path` (the first `limit` if given) and its detected format.

    `path` is a JSON/JSONL(.gz)/Parquet file, a `save_to_disk` directory, or a hub dataset id;
    `split` picks a DatasetDict's split (default train). `fields` maps canonical field names
    onto the file's own keys (see conversations.parse_fields). With `skip_bad_records`, a place the
    reader cannot read becomes a record with `error` set (never scored) instead of an error.
    """
    fields = fields or {}
    source = sources.resolve_source(path, split)
    report = ReadReport()
    records = list(readers.iter_records(source, report, skip_bad_records=skip_bad_records,
                                        limit=limit))
    fmt = resolve_format(records, source, fmt, fields)
    return Dataset(source.label, records, fmt, source.container, report, fields, source)


def resolve_format(records: Iterable[Record], source: sources.Source, fmt: Format | None,
                    fields: dict[str, str]) -> Format:
    """`fmt` if given (checked), else detected from the first record the reader could read."""
    if fmt is not None and fmt not in conversations.FORMATS:
        raise GradfilterError(f"--format must be one of {list(conversations.FORMATS)}, got {fmt!r}")
    first_bad = None
    for record in records:
        if record.error is None:
            return fmt or conversations.detect_format(record, source, fields)
        first_bad = first_bad or record
    if first_bad is not None:
        raise GradfilterError(f"no record of {source} could be read; the first: {first_bad.error}")
    raise GradfilterError(f"{source}: the dataset holds no records")


def as_dataset(data: str | Path | Dataset | Any, fmt: Format | None = None,
               limit: int | None = None, skip_bad_records: bool = False,
               fields: dict[str, str] | None = None) -> Dataset:
    """`data` itself if it was read already, records in memory (a list of dicts, a
    `datasets.Dataset`, a pandas DataFrame: `memory`) as they are, else the file read now."""
    from .memory import in_memory_records, is_in_memory

    if isinstance(data, Dataset):
        return data
    if is_in_memory(data) or not isinstance(data, str | Path):  # (other objects: refused)
        source, records = in_memory_records(data, limit)
        fields = fields or {}
        found = resolve_format(records, source, fmt, fields)
        return Dataset(source.label, records, found, source.container, ReadReport(), fields,
                       source)
    return read_dataset(data, fmt, limit, fields, skip_bad_records=skip_bad_records)


def record_notes(dataset: Dataset) -> dict[str, Any]:
    """Recoveries that keep a record in the run, each listed by record number: a duplicate
    `id` (both records are kept and scored), a conversation that ends on a prompt turn after
    an answer (scored; the unanswered tail carries no loss), role names in another case or
    with spaces (read as the canonical role), a key twice in one JSON object (the last value
    is read), an empty reply (scored) and exact copies of earlier records (all kept)."""
    ids = readers.IdTracker()
    duplicates: dict[str, int] = {}
    ends_on_prompt: list[int] = []
    role_variants: list[int] = []
    repeated_keys: dict[str, list[str]] = {}
    empty_replies: list[int] = []
    copies = quality.CopyCounter()
    for record in dataset.records:
        if record.error is not None:
            continue
        earlier = ids.see(record)
        if earlier is not None:
            duplicates[str(record.index)] = earlier
        keys = quality.repeated_keys(record.raw, record.data)
        if keys:
            repeated_keys[str(record.index)] = keys
        try:
            turns = dataset.turns(record)
        except GradfilterError:
            continue  # unscored, with its reason, elsewhere
        copies.add(record.index, turns)
        if quality.empty_replies(turns):
            empty_replies.append(record.index)
        if conversations.ends_on_prompt(turns):
            ends_on_prompt.append(record.index)
        if conversations.has_role_variants(record, dataset.format, dataset.fields):
            role_variants.append(record.index)
    return {"duplicate_ids": duplicates, "ends_on_prompt": ends_on_prompt,
            "role_variants": role_variants, "duplicate_keys": repeated_keys,
            "empty_replies": empty_replies,
            "exact_copies": copies.copies(len(dataset.records)).as_dict()}
