"""Selection from a statistics table, written as a subset of the input (no model here).

Only the table's scores are held in memory: the input is read again as a stream and the chosen
records written as they pass (see `writing`). This module imports neither torch nor a model,
so `gradfilter select` starts fast and small.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .arguments import path_or_name
from .binding import DataCheck, table_data
from .data import conversations, readers, sources
from .data.conversations import Format
from .data.dataset import Dataset, as_dataset, resolve_format
from .data.memory import is_in_memory
from .data.readers import ReadReport, Record
from .data.schemas import SCHEMAS, Schema, as_schema
from .data.writers import in_output_order, reads_records, write_rows, write_subset
from .decisions import ANNOTATION_KEY, Decisions, decide, table_columns
from .diversity import DEFAULT_THRESHOLD, DIVERSITY, DedupReport, dedup
from .errors import GradfilterError
from .outputs import write_run_record, written_together
from .paths import refuse_collisions, select_paths
from .selection import Selection, cut_score
from .strata import Allocation, ClusterFeatures, RecordSource, Within, check_options, choose
from .table import load_scores, load_sketch_features, table_utility

if TYPE_CHECKING:
    import pandas as pd

PREVIEWS = 3  # best and worst records shown after a selection


@dataclass(frozen=True)
class Preview:
    """One record shown after a selection: where it is, its score, its first prompt and the
    answer to it, each on one line and cut short."""

    index: int
    score: float
    prompt: str
    answer: str = ""


@dataclass(frozen=True)
class Subset:
    """What `select` wrote: the selection, every record's score, where it came from, what the
    read recovered from, and the best and worst records by score (for the summary)."""

    selection: Selection
    scores: np.ndarray  # one per input record, NaN where unscored
    utility: str
    source: sources.Source
    format: Format
    container: sources.Container  # of the subset written
    report: ReadReport  # warnings and unreadable places met while reading the input
    best: list[Preview]
    worst: list[Preview]
    diversity: dict | None = None  # what near-duplicate suppression removed (--diversity)
    # The data against the table's record of it (binding.DataCheck.finish: fingerprints, the
    # check's outcome, a warning where it could not check or a mismatch was allowed).
    data_check: dict | None = None
    nothing_kept: str | None = None  # why no record was kept, where none was
    traces: dict | None = None  # the rejected and annotated records written: path, records
    decisions: Decisions | None = None  # every record's decision (`decisions`)
    # In memory (out=None): the input's records, and the kept ones in output order and schema.
    records: list[Record] | None = None
    kept: list[dict] | None = None
    strata: dict | None = None  # what --stratify did (the run record's `stratify`)

    def annotated(self) -> list[dict]:
        """Every record (in memory) with its decision under `ANNOTATION_KEY`."""
        if self.records is None or self.decisions is None:
            raise GradfilterError("the records are not in memory: select with out=None (or "
                                  "write them with annotate=PATH)")
        return [{**(r.data if r.error is None else {}), ANNOTATION_KEY: self.decisions.entry(
            r.index)} for r in self.records]

    def to_pandas(self) -> pd.DataFrame:
        """Every record (in memory) as a DataFrame row: its fields, then `selected`, `rank`,
        `score`, `utility` and `reason` (a field of the record by one of those names is
        shadowed there; `annotated()` keeps both)."""
        import pandas as pd

        rows = self.annotated()
        return pd.DataFrame([{**{k: v for k, v in row.items() if k != ANNOTATION_KEY},
                              **row[ANNOTATION_KEY]} for row in rows])

    @property
    def indices(self) -> np.ndarray:
        return self.selection.indices

    @property
    def requested(self) -> int:
        return self.selection.requested

    @property
    def n_records(self) -> int:
        return self.selection.n_records

    @property
    def n_nonfinite(self) -> int:
        return self.selection.n_nonfinite

    def in_order(self, order: str) -> np.ndarray:
        return self.selection.in_order(order)


@written_together  # the subset and its run record move into place together
def select(
    data: str | Path | Dataset | Any,
    stats: str | Path | pa.Table | np.ndarray,
    out: str | Path | None = None,
    *,
    utility: str | None = None,
    ratio: float | None = None,
    count: int | None = None,
    threshold: float | None = None,
    order: str = "input",
    score_field: str | None = None,
    fmt: Format | None = None,
    limit: int | None = None,
    out_format: sources.Container | None = None,
    split: str | None = None,
    fields: dict[str, str] | None = None,
    diversity: str = "none",
    diversity_threshold: float = DEFAULT_THRESHOLD,
    allow_data_mismatch: bool = False,
    out_schema: Schema = "native",
    rejected: str | Path | None = None,
    annotate: str | Path | None = None,
    stratify: str | None = None,
    allocate: Allocation | None = None,
    within: Within | None = None,
    cluster_features: ClusterFeatures | None = None,
    seed: int = 0,
) -> Subset:
    """Write the top records of `data` by `utility` to `out`, unchanged (`out_schema`
    "native"; "messages" and "prompt-completion" write them as TRL takes them: see
    `data.schemas`), in the container `out_format` names, else `out`'s extension (.json,
    .jsonl, .parquet), else the input's. `stats` is the statistics table (a Parquet path or a
    table), or the scores of `utility` themselves (one per record). `rejected` gets the records
    not kept (unchanged), `annotate` every record with its decision (`decisions`), each in the
    container its extension names.

    Only the table's scores are held in memory, read and ranked once: the input is read again
    as a stream and the chosen records written as they pass (`order="score"` holds the chosen
    ones only), and the best and worst few are kept on the way for the summary.

    `diversity="dedup"` removes near-duplicates on the way down the ranking (their gradient
    sketches' cosine >= `diversity_threshold` to a record kept already; see `diversity`): it
    reads the sketches of a pool of the best-ranked records only.

    The records are checked against the table's record of its data on the way (`binding`): a
    table of other, edited or reordered data is refused, nothing written, unless
    `allow_data_mismatch`; a table that records no data is used with a warning.

    `data` may be records in memory (a list of dicts, a `datasets.Dataset`, a pandas
    DataFrame). With `out=None` nothing is written: the result holds the records
    (`Subset.kept`, `Subset.annotated`, `Subset.to_pandas`; see `select_in_memory`).

    `threshold` keeps only records scoring at or above it (all of them, or the top of them up
    to `ratio`/`count`). `stratify` (`FIELD`, `field:FIELD`, `length[:B]`, `clusters[:K]`)
    spreads the budget over strata by `allocate` (`even`, or `proportional` to the pool's
    shares; default: even for clusters, proportional otherwise) and takes the best by the
    utility (or, `within="random"`, a draw seeded by `seed`) within each; see `strata` and
    `clusters` (`cluster_features`: trajectory, loss or trajectory+sketch).
    """
    _paths_or_records(data, out)
    if not isinstance(data, str | Path | Dataset) or out is None:  # records in memory
        data = as_dataset(data, fmt, limit, fields=fields) if out is not None else read_all(
            data, fmt, limit, fields, split)
    if not isinstance(stats, pa.Table | np.ndarray):
        path_or_name(stats, "--stats")
    if out is None:
        _nothing_to_write(rejected=rejected, annotate=annotate, out_format=out_format,
                          score_field=score_field)
        return select_in_memory(data, stats, utility=utility, ratio=ratio, count=count,
                                threshold=threshold, order=order, out_schema=out_schema,
                                diversity=diversity, diversity_threshold=diversity_threshold,
                                allow_data_mismatch=allow_data_mismatch,
                                stratify=stratify, allocate=allocate, within=within,
                                cluster_features=cluster_features, seed=seed)
    refuse_collisions(*select_paths(data, stats, out, out_format, rejected=rejected,
                                    annotate=annotate))
    check_options(stratify, allocate, within, cluster_features, threshold, diversity)
    if out_schema not in SCHEMAS:
        raise GradfilterError(f"--out-schema must be one of {list(SCHEMAS)}, got {out_schema!r}")
    start = time.perf_counter()
    utility = utility or table_utility(stats)
    scores = load_scores(stats, utility)
    selection, strata = choose(
        scores, stats, ratio=ratio, count=count, threshold=threshold, stratify=stratify,
        allocate=allocate, within=within, cluster_features=cluster_features, seed=seed,
        records=records_again(data, split, limit),
        where=str(data.path if isinstance(data, Dataset) else data))
    ranked_before_dedup = selection.ranked
    removed = None
    if diversity != "none":
        selection, removed = _diversify(selection, stats, diversity, diversity_threshold)
    shown = {int(i) for i in (*selection.best(PREVIEWS), *selection.worst(PREVIEWS))}
    check = None if isinstance(stats, np.ndarray) else DataCheck(
        table_data(stats), data.path if isinstance(data, Dataset) else data,
        allow_data_mismatch)
    source, fmt, fields, report, describe, watch, records, again, prompts = _reading(
        data, len(scores), shown, check, fmt, fields, split, limit)
    container = sources.output_container(out, out_format, source.container)
    native = out_schema == "native"
    if check is not None and not isinstance(data, Dataset) and native and not reads_records(
            source, container):
        # The writer copies Arrow rows without reading records: check them before it runs.
        check.see_all(_read(source, ReadReport(), limit)).finish()
    chosen = selection.in_order(order)
    nothing = None if len(chosen) else why_nothing_kept(selection, ratio, count, threshold)
    if native:
        write_subset(Path(out), source, chosen, container, records, n_records=len(scores),
                     score_field=score_field, scores=scores if score_field else None)
    else:
        convert = partial(as_schema, schema=out_schema, fmt=fmt, source=source, fields=fields)
        write_rows(Path(out), ({**convert(r), **({score_field: float(scores[r.index])}
                                                 if score_field else {})}
                               for r in in_output_order(records(), chosen, len(scores))),
                   container)
    decided = decide(selection, ranked_before_dedup, scores, utility, *table_columns(stats))
    traces = _write_traces(decided, source, again, rejected, annotate, watch.unreadable,
                           report.shards)
    if prompts is None:  # the records went by on their way to the writer, or were not read
        prompts = watch.prompts if watch.count else {
            i: describe(record) for i, record in _take(source, shown, limit).items()}
    write_run_record(Path(out), {
        "stage": "select",
        "data": str(source),
        "split": source.split,
        "stats": str(stats) if isinstance(stats, str | Path) else None,
        "records": len(scores),
        "utility": utility,
        "ratio": ratio,
        "count": count,
        "order": order,
        "out_format": container,
        "out_schema": out_schema,
        "score_field": score_field,
        "selected": len(chosen),
        "requested": selection.requested,
        **({"nothing_kept": nothing} if nothing else {}),
        "nonfinite_scores": selection.n_nonfinite,
        "decisions": decided.counts(),
        **traces,
        "diversity": {"method": diversity, **(removed.as_dict() if removed else {})},
        "threshold": threshold,
        "cut_score": cut_score(scores, chosen),
        "stratify": strata,
        "seed": seed,
        "read_warnings": report.warnings,
        **({"shards": report.shards} if report.shards else {}),
        "unreadable_records": report.skipped,
        **(check.finish() if check is not None else {"data_check": "unchecked: bare scores"}),
        "wall_seconds": {"select": time.perf_counter() - start},
    })

    def previews(indices: np.ndarray) -> list[Preview]:
        return [Preview(int(i), float(scores[i]), *prompts.get(int(i), ("", "")))
                for i in indices]

    return Subset(selection, scores, utility, source, fmt, container, report,
                  previews(selection.best(PREVIEWS)), previews(selection.worst(PREVIEWS)),
                  removed.as_dict() if removed else None,
                  check.finish() if check is not None else None, nothing, traces, decided,
                  strata=strata)


def _nothing_to_write(**options: object) -> None:
    """out=None with options that name something to write: refused (nothing would be)."""
    named = [name for name, value in options.items() if value is not None]
    if named:
        raise GradfilterError(f"{', '.join(named)}: out=None writes nothing; the result holds "
                              "the records (Subset.kept, annotated(), to_pandas())")


def read_all(data: Any, fmt: Format | None, limit: int | None,
             fields: dict[str, str] | None, split: str | None) -> Dataset:
    """`data` in memory, whatever it is (a path is read whole)."""
    from .data.dataset import read_dataset

    if isinstance(data, str | Path):
        return read_dataset(data, fmt, limit, fields, split=split)
    return as_dataset(data, fmt, limit, fields=fields)


def select_in_memory(dataset: Dataset, stats: str | Path | pa.Table | np.ndarray, *,
                     utility: str | None = None, ratio: float | None = None,
                     count: int | None = None, threshold: float | None = None,
                     order: str = "input",
                     out_schema: Schema = "native", diversity: str = "none",
                     diversity_threshold: float = DEFAULT_THRESHOLD,
                     allow_data_mismatch: bool = False, stratify: str | None = None,
                     allocate: Allocation | None = None, within: Within | None = None,
                     cluster_features: ClusterFeatures | None = None,
                     seed: int = 0) -> Subset:
    """`select` with nothing written: the kept records (`Subset.kept`, in `order` and
    `out_schema`) and every record's decision, checked against the table as `select` checks."""
    if out_schema not in SCHEMAS:
        raise GradfilterError(f"--out-schema must be one of {list(SCHEMAS)}, got {out_schema!r}")
    utility = utility or table_utility(stats)
    scores = load_scores(stats, utility)
    source = dataset.source or sources.resolve_source(dataset.path)
    _check_rows(len(scores), source, len(dataset.records))
    check = None if isinstance(stats, np.ndarray) else DataCheck(
        table_data(stats), dataset.path, allow_data_mismatch).see_all(dataset.records)
    outcome = check.finish() if check is not None else None
    check_options(stratify, allocate, within, cluster_features, threshold, diversity)
    selection, strata = choose(
        scores, stats, ratio=ratio, count=count, threshold=threshold, stratify=stratify,
        allocate=allocate, within=within, cluster_features=cluster_features, seed=seed,
        records=lambda: iter(dataset.records), where=str(dataset.path))
    ranked_before_dedup, removed = selection.ranked, None
    if diversity != "none":
        selection, removed = _diversify(selection, stats, diversity, diversity_threshold)
    chosen = selection.in_order(order)
    convert = (None if out_schema == "native" else partial(
        as_schema, schema=out_schema, fmt=dataset.format, source=source, fields=dataset.fields))
    kept = [dict(dataset.records[i].data) if convert is None else convert(dataset.records[i])
            for i in chosen]
    describe = partial(_prompt_preview, fmt=dataset.format, source=source,
                       fields=dataset.fields)

    def previews(indices: np.ndarray) -> list[Preview]:
        return [Preview(int(i), float(scores[i]), *describe(dataset.records[int(i)]))
                for i in indices]

    return Subset(selection, scores, utility, source, dataset.format, source.container,
                  dataset.report, previews(selection.best(PREVIEWS)),
                  previews(selection.worst(PREVIEWS)), removed.as_dict() if removed else None,
                  outcome,
                  None if len(chosen) else why_nothing_kept(selection, ratio, count, threshold),
                  None, decide(selection, ranked_before_dedup, scores, utility,
                               *table_columns(stats)), dataset.records, kept, strata)


def _write_traces(decided: Decisions, source: sources.Source,
                  records: Callable[[], Iterable[Record]], rejected: str | Path | None,
                  annotate: str | Path | None, unreadable: set[int],
                  shards: list[dict]) -> dict:
    """The records not kept (unchanged, in input order; a place the reader could not read has
    no record to write, its decision is in the annotations) and every record with its decision
    (under `ANNOTATION_KEY`); what was written where, for the run record."""
    written: dict = {}
    if rejected is not None:
        dropped = np.setdiff1d(np.flatnonzero(~decided.selected),
                               np.fromiter(unreadable, dtype=np.int64))
        container = sources.output_container(rejected, None, source.container, "--rejected")
        write_subset(Path(rejected), source, dropped, container,
                     lambda: (r for r in records() if r.error is None),
                     n_records=len(decided.selected))
        written["rejected"] = {"path": str(rejected), "records": len(dropped)}
    if annotate is not None:
        container = sources.output_container(annotate, None, source.container, "--annotate")
        shard = _shard_of(shards)
        rows = ({**(r.data if r.error is None else {}),
                 ANNOTATION_KEY: {**decided.entry(r.index), **shard(r.index)}}
                for r in records() if r.index < len(decided.selected))
        written["annotated"] = {"path": str(annotate),
                                "records": write_rows(Path(annotate), rows, container)}
    return written


def _shard_of(shards: list[dict]) -> Callable[[int], dict]:
    """index -> {"shard": its file, "shard_index": its place there} for sharded data (an
    empty dict otherwise)."""
    if not shards:
        return lambda index: {}
    firsts = np.array([s["first"] for s in shards])

    def shard(index: int) -> dict:
        k = int(np.searchsorted(firsts, index, side="right")) - 1
        return {"shard": shards[k]["file"], "shard_index": index - shards[k]["first"]}

    return shard


def why_nothing_kept(selection: Selection, ratio: float | None, count: int | None,
                     threshold: float | None = None) -> str:
    """Why a selection kept no record, in words."""
    if threshold is not None and selection.n_nonfinite < selection.n_records:
        return f"no record scores at least --threshold {threshold:g}"
    if count is not None and selection.requested == 0:
        return "--count 0"
    if ratio is not None and selection.requested == 0:
        return (f"--ratio {ratio:g} of {selection.n_records} records rounds to 0; ask for a "
                "larger --ratio or a --count")
    return f"none of the {selection.n_records} records has a finite score"


def _reading(data: str | Path | Dataset, n_scores: int, shown: set[int],
             check: DataCheck | None, fmt: Format | None, fields: dict[str, str] | None,
             split: str | None, limit: int | None) -> tuple:
    """How `select` reads its input: the source, format, fields and read report, the preview
    maker, the watch over the records, the records (once, watched), the records again (for the
    traces), and the previews' prompts where the records are in memory already."""
    report = ReadReport()
    if isinstance(data, Dataset):
        source = data.source or sources.resolve_source(data.path)
        fmt, fields, report = data.format, data.fields, data.report
        _check_rows(n_scores, source, len(data.records))
        if check is not None:
            check.see_all(data.records).finish()  # before writing: the records are in memory
        describe = partial(_prompt_preview, fmt=fmt, source=source, fields=fields)
        watch = _Watch(shown, None, source, describe)
        records = partial(watch.stream, data.records)
        again: Callable[[], Iterable[Record]] = partial(iter, data.records)
        prompts: dict[int, tuple[str, str]] | None = {
            i: describe(data.records[i]) for i in shown if i < len(data.records)}
    else:
        fields = fields or {}
        source = sources.resolve_source(data, split)
        fmt = resolve_format(_read(source, ReadReport(), limit), source, fmt, fields)
        if source.container in sources.ARROW_CONTAINERS:
            n_rows = readers.arrow_num_rows(source)
            _check_rows(n_scores, source, n_rows if limit is None else min(n_rows, limit))
        describe = partial(_prompt_preview, fmt=fmt, source=source, fields=fields)
        watch = _Watch(shown, n_scores, source, describe, check)
        records = partial(watch.stream, _read(source, report, limit))
        again = partial(_read, source, ReadReport(), limit)
        prompts = None
    return source, fmt, fields, report, describe, watch, records, again, prompts


def _paths_or_records(data: object, out: object) -> None:
    """DATA and --out that are neither paths nor (DATA) records in memory: refused first."""
    if not isinstance(data, Dataset) and not is_in_memory(data):
        path_or_name(data, "DATA")
    if out is not None:
        path_or_name(out, "the subset (--out)")


def records_again(data: str | Path | Dataset, split: str | None,
                   limit: int | None) -> RecordSource:
    """The data's records once more, for `--stratify FIELD` (read only if called)."""
    if isinstance(data, Dataset):
        return lambda: iter(data.records)
    return lambda: _read(sources.resolve_source(data, split), ReadReport(), limit)


def _diversify(selection: Selection, stats, diversity: str,
               threshold: float) -> tuple[Selection, DedupReport]:
    """The selection with near-duplicates removed (`dedup`)."""
    if diversity != "dedup":
        raise GradfilterError(f"--diversity must be one of {list(DIVERSITY)}, got {diversity!r}")
    if isinstance(stats, np.ndarray):
        raise GradfilterError("--diversity needs a statistics table with gradient sketches, "
                              "not bare scores")
    return dedup(selection, partial(load_sketch_features, stats), threshold)


def _prompt_preview(record: Record, fmt: Format, source: sources.Source,
                    fields: dict[str, str], width: int = 70) -> tuple[str, str]:
    """The record's first user turn and the assistant turn after it, each on one line and cut
    to `width` characters ("" for a place the reader could not read: the writer refuses it if
    it is chosen)."""
    if record.error is not None:
        return "", ""
    turns = conversations.to_turns(record, fmt, source, fields)
    first = next((k for k, t in enumerate(turns) if t.role == "user"), None)
    answer = "" if first is None else next(
        (t.text for t in turns[first + 1:] if t.role == "assistant"), "")
    return (_one_line(turns[first].text if first is not None else "", width),
            _one_line(answer, width))


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text[:width] + ("..." if len(text) > width else "")


def _read(source: sources.Source, report: ReadReport, limit: int | None) -> Iterator[Record]:
    """The input again, as a stream; unreadable places come as records with `error` (they are
    unscored in any table made from this input, so never chosen)."""
    return readers.iter_records(source, report, skip_bad_records=True, limit=limit)


def _take(source: sources.Source, indices: set[int], limit: int | None) -> dict[int, Record]:
    wanted = {i for i in indices if limit is None or i < limit}
    if not wanted:
        return {}
    if source.container in sources.ARROW_CONTAINERS:
        return readers.take_records(source, wanted)
    return {r.index: r for r in _read(source, ReadReport(), limit) if r.index in wanted}


def _mismatch(n_rows: int, source: sources.Source, n_records: int) -> GradfilterError:
    return GradfilterError(
        f"the statistics table has {n_rows} rows but {source} has "
        f"{n_records} records; score this file first"
    )


def _check_rows(n_rows: int, source: sources.Source, n_records: int) -> None:
    if n_rows != n_records:
        raise _mismatch(n_rows, source, n_records)


class _Watch:
    """Counts the records on their way to the writer and describes the few asked for (holding
    no record); at the end of the stream, a count that differs from the table's rows is an
    error (raised inside the writer, so no output is left)."""

    def __init__(self, remember: set[int], expected: int | None, source: sources.Source,
                 describe: Callable[[Record], tuple[str, str]],
                 check: DataCheck | None = None) -> None:
        self.remember, self.expected, self.source = remember, expected, source
        self.describe = describe
        self.check = check  # sees each record where the records were not checked before
        self.count = 0
        self.unreadable: set[int] = set()  # places the reader could not make a record of
        self.prompts: dict[int, tuple[str, str]] = {}

    def stream(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            self.count += 1
            if record.error is not None:
                self.unreadable.add(record.index)
            if record.index in self.remember:
                self.prompts[record.index] = self.describe(record)
            if self.expected is not None and self.check is not None:
                self.check.see(record)
            yield record
        if self.expected is not None and self.count != self.expected:
            raise _mismatch(self.expected, self.source, self.count)
        if self.expected is not None and self.check is not None:
            self.check.finish()  # a mismatch not allowed raises here: the writer leaves nothing
