"""The Python API: score a dataset into a statistics table, select from it, or both."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import formats
from .ensemble import LoRAEnsemble
from .errors import GradfilterError
from .formats import Format, ReadReport, Record
from .gradstats import ScoreConfig, stats_table, train_and_collect
from .outputs import atomic_path, device_description, write_run_record
from .proxy import (
    default_targets,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from .selection import Selection, select_top
from .tokenization import Encoded, encode, resolve_template
from .utilities import utility_scores, with_utilities
from .writing import write_subset


@dataclass(frozen=True)
class Dataset:
    path: Path  # the data as the user named it (a hub id reads as a relative path)
    records: list[Record]
    format: Format
    container: formats.Container
    report: ReadReport
    fields: dict[str, str]
    source: formats.Source | None = None  # where the records came from, to write a subset

    def turns(self, record: Record) -> list[formats.Turn]:
        return formats.to_turns(record, self.format, self.path, self.fields)


def read_dataset(path: str | Path, fmt: Format | None = None, limit: int | None = None,
                 fields: dict[str, str] | None = None, *, split: str | None = None,
                 skip_bad_records: bool = False) -> Dataset:
    """All records of `path` (the first `limit` if given) and its detected format.

    `path` is a JSON/JSONL(.gz)/Parquet file, a `save_to_disk` directory, or a hub dataset id;
    `split` picks a DatasetDict's split (default train). `fields` maps canonical field names
    onto the file's own keys (see formats.parse_fields). With `skip_bad_records`, a place the
    reader cannot read becomes a record with `error` set (never scored) instead of an error.
    """
    fields = fields or {}
    source = formats.resolve_source(path, split)
    report = ReadReport()
    records = list(formats.iter_records(source, report, skip_bad_records=skip_bad_records,
                                        limit=limit))
    fmt = _resolve_format(records, source, fmt, fields)
    return Dataset(source.label, records, fmt, source.container, report, fields, source)


def _resolve_format(records: Iterable[Record], source: formats.Source, fmt: Format | None,
                    fields: dict[str, str]) -> Format:
    """`fmt` if given (checked), else detected from the first record the reader could read."""
    if fmt is not None and fmt not in formats.FORMATS:
        raise GradfilterError(f"--format must be one of {list(formats.FORMATS)}, got {fmt!r}")
    first_bad = None
    for record in records:
        if record.error is None:
            return fmt or formats.detect_format(record, source, fields)
        first_bad = first_bad or record
    if first_bad is not None:
        raise GradfilterError(f"no record of {source} could be read; the first: {first_bad.error}")
    raise GradfilterError(f"{source}: the dataset holds no records")


def as_dataset(data: str | Path | Dataset, fmt: Format | None = None,
               limit: int | None = None, skip_bad_records: bool = False) -> Dataset:
    """`data` itself if it was read already, else the file read now."""
    if isinstance(data, Dataset):
        return data
    return read_dataset(data, fmt, limit, skip_bad_records=skip_bad_records)


def _encode_all(dataset: Dataset, tokenizer, config: ScoreConfig, skip_bad_records: bool):
    """Token ids, masks and, per record, why it cannot be scored (None if it can)."""
    template = resolve_template(tokenizer, config.template)  # type: ignore[arg-type]
    encoded, reasons = [], []
    for record in dataset.records:
        try:
            turns = dataset.turns(record)
        except GradfilterError as exc:
            if not skip_bad_records:
                raise
            reasons.append(f"invalid record: {exc}")
            encoded.append(Encoded(np.zeros(0, np.int64), np.zeros(0, bool), truncated=False))
            continue
        item = encode(turns, tokenizer, template, config.max_length, config.turns)  # type: ignore[arg-type]
        encoded.append(item)
        if not turns:
            reasons.append("empty conversation")
        elif not any(turn.role == "assistant" for turn in turns[1:]):
            reasons.append("no assistant turn after a prompt")
        elif item.n_response_tokens == 0:
            reasons.append("no response tokens within max_length")
        else:
            reasons.append(None)
    return template, encoded, reasons


def score(
    data: str | Path | Dataset,
    out: str | Path,
    config: ScoreConfig | None = None,
    *,
    fmt: Format | None = None,
    limit: int | None = None,
    save_adapters: str | Path | None = None,
    skip_bad_records: bool = False,
    progress: bool = True,
) -> pa.Table:
    """Train the LoRA ensemble on `data`, write the statistics table (Parquet) to `out`."""
    config = config or ScoreConfig()
    config.validate()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    dataset = as_dataset(data, fmt, limit, skip_bad_records)
    device = resolve_device(config.device)  # type: ignore[arg-type]
    dtype = resolve_dtype(config.dtype, device)  # type: ignore[arg-type]
    tokenizer = load_tokenizer(config.proxy)
    template, encoded, reasons = _encode_all(dataset, tokenizer, config, skip_bad_records)
    timings["read_and_tokenize"] = time.perf_counter() - start

    start = time.perf_counter()
    torch.manual_seed(config.seed)
    model = load_model(config.proxy, device)
    targets = config.lora_targets or default_targets(model)
    config = replace(config, lora_targets=tuple(targets))
    ensemble = LoRAEnsemble(model, config.members, config.lora_rank, config.lora_alpha,
                            config.lora_targets, config.seed)
    timings["load_proxy"] = time.perf_counter() - start

    scorable = np.array([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)

    def export(epoch: int) -> None:
        if save_adapters is not None:
            for m in range(config.members):
                ensemble.save_member(m, Path(save_adapters) / f"epoch{epoch}" / f"member{m}",
                                     config.proxy)

    raw = train_and_collect(ensemble, encoded, scorable, config, device, dtype, progress, export)
    timings.update(raw.phase_seconds)
    table = with_utilities(stats_table(
        len(dataset.records), scorable,
        np.array([e.n_response_tokens for e in encoded]),
        np.array([e.truncated for e in encoded]), reasons, raw, config,
    ))
    start = time.perf_counter()
    with atomic_path(Path(out)) as tmp:
        pq.write_table(table, tmp)
    timings["write_table"] = time.perf_counter() - start
    write_run_record(Path(out), {
        "stage": "score",
        "data": str(dataset.path),
        "format": dataset.format,
        "template": template,
        "records": len(dataset.records),
        "scored": len(scorable),
        "unscored": {str(i): r for i, r in enumerate(reasons) if r is not None},
        "truncated": int(sum(e.truncated for e in encoded)),
        **record_notes(dataset),
        "read_warnings": dataset.report.warnings,
        "config": asdict(config),
        "seeds": {"seed": config.seed, "member_seed_rule": "derived_seed(seed, m, ...)"},
        "device": device_description(str(device)),
        "dtype": str(dtype),
        "train_loss_first_last": raw.train_losses[:1] + raw.train_losses[-1:],
        "wall_seconds": timings,
        "save_adapters": str(save_adapters) if save_adapters else None,
    })
    return table


def record_notes(dataset: Dataset) -> dict[str, Any]:
    """Recoveries that keep a record in the run, each listed by record number: a duplicate
    `id` (both records are kept and scored) and a conversation that ends on a prompt turn after
    an answer (scored; the unanswered tail carries no loss)."""
    ids = formats.IdTracker()
    duplicates: dict[str, int] = {}
    ends_on_prompt: list[int] = []
    for record in dataset.records:
        if record.error is not None:
            continue
        earlier = ids.see(record)
        if earlier is not None:
            duplicates[str(record.index)] = earlier
        try:
            turns = dataset.turns(record)
        except GradfilterError:
            continue  # unscored, with its reason, elsewhere
        answered = any(turn.role == "assistant" for turn in turns[1:])
        if answered and turns[-1].role != "assistant":
            ends_on_prompt.append(record.index)
    return {"duplicate_ids": duplicates, "ends_on_prompt": ends_on_prompt}


def load_stats(path: str | Path) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise GradfilterError(f"{path}: no such statistics table")
    try:
        return pq.read_table(path)
    except pa.ArrowInvalid as exc:
        raise GradfilterError(f"{path}: not a Parquet statistics table: {exc}") from None


@dataclass(frozen=True)
class Subset:
    """What `select_subset` wrote, and the few input records the caller asked to see."""

    selection: Selection
    source: formats.Source
    format: Format
    fields: dict[str, str]
    container: formats.Container
    records: dict[int, Record]  # the records at `remember`, by index
    report: ReadReport  # warnings and unreadable places met while reading the input

    def turns(self, record: Record) -> list[formats.Turn]:
        return formats.to_turns(record, self.format, self.source, self.fields)


def select(
    data: str | Path | Dataset,
    stats: str | Path | pa.Table,
    out: str | Path,
    *,
    utility: str = "gsnr",
    ratio: float | None = None,
    count: int | None = None,
    order: str = "input",
    score_field: str | None = None,
    fmt: Format | None = None,
    limit: int | None = None,
    out_format: formats.Container | None = None,
    split: str | None = None,
    fields: dict[str, str] | None = None,
) -> Selection:
    """Write the top records of `data` by `utility` to `out`, unchanged, in the input's
    container unless `out_format` names another.

    Only the table's scores are held in memory: the input is read again as a stream and the
    chosen records written as they pass (`order="score"` holds the chosen ones only).
    """
    return select_subset(data, stats, out, utility=utility, ratio=ratio, count=count,
                         order=order, score_field=score_field, fmt=fmt, limit=limit,
                         out_format=out_format, split=split, fields=fields).selection


def select_subset(
    data: str | Path | Dataset,
    stats: str | Path | pa.Table,
    out: str | Path,
    *,
    utility: str = "gsnr",
    ratio: float | None = None,
    count: int | None = None,
    order: str = "input",
    score_field: str | None = None,
    fmt: Format | None = None,
    limit: int | None = None,
    out_format: formats.Container | None = None,
    split: str | None = None,
    fields: dict[str, str] | None = None,
    remember: Iterable[int] = (),
) -> Subset:
    """`select`, also returning the format and the input records at `remember` (previews)."""
    start = time.perf_counter()
    table = stats if isinstance(stats, pa.Table) else load_stats(stats)
    scores = utility_scores(table, utility)
    selection = select_top(scores, ratio=ratio, count=count)
    chosen = selection.in_order(order)
    remember = {int(i) for i in remember}
    report = ReadReport()
    if isinstance(data, Dataset):
        source = data.source or formats.resolve_source(data.path)
        fmt, fields, report = data.format, data.fields, data.report
        _check_rows(table, source, len(data.records))
        watch = _Watch(remember, None, table, source)
        records = partial(watch.stream, data.records)
        kept: dict[int, Record] | None = {
            i: data.records[i] for i in remember if i < len(data.records)}
    else:
        fields = fields or {}
        source = formats.resolve_source(data, split)
        fmt = _resolve_format(_read(source, ReadReport(), limit), source, fmt, fields)
        if source.container in formats.ARROW_CONTAINERS:
            n_rows = formats.arrow_num_rows(source)
            _check_rows(table, source, n_rows if limit is None else min(n_rows, limit))
        watch = _Watch(remember, table.num_rows, table, source)
        records = partial(watch.stream, _read(source, report, limit))
        kept = None
    container = out_format or source.container
    if container not in formats.CONTAINERS:
        raise GradfilterError(f"--out-format must be one of {list(formats.CONTAINERS)}")
    write_subset(Path(out), source, chosen, container, records, n_records=table.num_rows,
                 score_field=score_field, scores=scores if score_field else None)
    if kept is None:  # the records went by on their way to the writer, or were not read
        kept = watch.kept if watch.count else _take(source, remember, limit)
    write_run_record(Path(out), {
        "stage": "select",
        "data": str(source),
        "split": source.split,
        "stats": str(stats) if not isinstance(stats, pa.Table) else None,
        "records": table.num_rows,
        "utility": utility,
        "ratio": ratio,
        "count": count,
        "order": order,
        "out_format": container,
        "score_field": score_field,
        "selected": len(chosen),
        "requested": selection.requested,
        "nonfinite_scores": selection.n_nonfinite,
        "read_warnings": report.warnings,
        "unreadable_records": report.skipped,
        "wall_seconds": {"select": time.perf_counter() - start},
    })
    return Subset(selection, source, fmt, fields, container, kept, report)


def _read(source: formats.Source, report: ReadReport, limit: int | None) -> Iterator[Record]:
    """The input again, as a stream; unreadable places come as records with `error` (they are
    unscored in any table made from this input, so never chosen)."""
    return formats.iter_records(source, report, skip_bad_records=True, limit=limit)


def _take(source: formats.Source, indices: set[int], limit: int | None) -> dict[int, Record]:
    wanted = {i for i in indices if limit is None or i < limit}
    if not wanted:
        return {}
    if source.container in formats.ARROW_CONTAINERS:
        return formats.take_records(source, wanted)
    return {r.index: r for r in _read(source, ReadReport(), limit) if r.index in wanted}


def _mismatch(table: pa.Table, source: formats.Source, n_records: int) -> GradfilterError:
    return GradfilterError(
        f"the statistics table has {table.num_rows} rows but {source} has "
        f"{n_records} records; score this file first"
    )


def _check_rows(table: pa.Table, source: formats.Source, n_records: int) -> None:
    if table.num_rows != n_records:
        raise _mismatch(table, source, n_records)


class _Watch:
    """Counts the records on their way to the writer and keeps the few asked for; at the end
    of the stream, a count that differs from the table's rows is an error (raised inside the
    writer, so no output is left)."""

    def __init__(self, remember: set[int], expected: int | None, table: pa.Table,
                 source: formats.Source) -> None:
        self.remember, self.expected, self.table, self.source = remember, expected, table, source
        self.count = 0
        self.kept: dict[int, Record] = {}

    def stream(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            self.count += 1
            if record.index in self.remember:
                self.kept[record.index] = record
            yield record
        if self.expected is not None and self.count != self.expected:
            raise _mismatch(self.table, self.source, self.count)
