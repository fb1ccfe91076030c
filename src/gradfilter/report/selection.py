"""What a selection's page shows, from files alone: the statistics table, the data, the run
records beside the table and the subset, and a benchmark's labels where there are some.

The selection is made again from the table (`select_top`, `strata.choose` where the subset's
run record names a --threshold or --stratify, and `dedup` where it says dedup was used: all are
deterministic under the recorded seed), so the page needs no live object of the run that made
the subset; where the subset's run record names another count, the page says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..binding import DataCheck, table_data
from ..diversity import DEFAULT_THRESHOLD, DedupReport, dedup
from ..errors import GradfilterError
from ..outputs import run_record_path
from ..selection import Selection, select_top
from ..strata import choose
from ..table import (
    IFD_RATIO,
    available_utilities,
    default_utility,
    load_scores,
    load_sketch_features,
    load_stats,
    open_table,
    require_utility,
    table_meta,
)
from ..utilities import superfiltering_score
from .records import RecordFacts, read_facts

EXAMPLES = 10  # records shown at the top, around the cut and at the bottom, by default
MAX_EXAMPLES = 50
GROUPS_SHOWN = 3  # near-duplicate groups shown with their texts
CHEAP = ("ifd", "loss", "perplexity", "length")  # baselines a ranking is compared with


@dataclass(frozen=True)
class SelectionSources:
    """The files a selection's page is built from, and how to read and select them. Unset
    choices come from the subset's run record, else the table (its default utility), else
    `select`'s defaults (ratio 0.1)."""

    table: Path
    data: str | None = None
    subset: Path | None = None  # a subset written by select/run: its run record is read
    labels: Path | None = None  # a Parquet file with a `corruption` column, one row a record
    fmt: str | None = None
    fields: dict[str, str] | None = None
    split: str | None = None
    limit: int | None = None
    utility: str | None = None
    ratio: float | None = None
    count: int | None = None
    diversity: str | None = None
    diversity_threshold: float | None = None
    examples: int = EXAMPLES
    allow_data_mismatch: bool = False


@dataclass
class SelectionView:
    """Everything the page shows, computed."""

    sources: SelectionSources
    utility: str
    ratio: float | None
    count: int | None
    scores: np.ndarray
    selection: Selection
    kept: np.ndarray  # bool per record
    meta: dict
    table_record: dict | None
    subset_record: dict | None
    record_columns: dict[str, np.ndarray]
    skip_reasons: list[tuple[int, str]]
    other_scores: dict[str, np.ndarray]  # utilities and baselines besides the ranking
    labels: np.ndarray | None  # corruption kind per record, "" where clean
    facts: RecordFacts | None
    data: str | None
    data_note: str | None
    plain: Selection | None = None  # the top-k before dedup removed near-duplicates
    dedup_report: DedupReport | None = None
    notes: list[str] = field(default_factory=list)
    threshold: float | None = None  # the subset's --threshold
    strata: dict | None = None  # what --stratify did, made again (the run record's shape)

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def cut(self) -> float | None:
        """The lowest kept score (None if nothing is kept)."""
        kept = self.selection.indices
        return float(np.min(self.scores[kept])) if len(kept) else None


def read_json(path: Path) -> dict | None:
    """A run record, or None where there is none (or it is not a JSON object)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def build_view(sources: SelectionSources) -> SelectionView:
    """Read the table, select as the subset was selected, read the data once."""
    if not 0 <= sources.examples <= MAX_EXAMPLES:
        raise GradfilterError(f"--examples must be between 0 and {MAX_EXAMPLES}, got "
                              f"{sources.examples}")
    table_path = Path(sources.table)
    schema = open_table(table_path).schema_arrow
    empty = pa.Table.from_batches([], schema=schema)
    subset_record = read_json(run_record_path(sources.subset)) if sources.subset else None
    table_record = read_json(run_record_path(table_path))
    asked = subset_record or {}
    utility = sources.utility or asked.get("utility") or default_utility(empty)
    require_utility(empty, utility)
    ratio, count = sources.ratio, sources.count
    if ratio is None and count is None:
        ratio, count = asked.get("ratio"), asked.get("count")
        if ratio is None and count is None and asked.get("threshold") is None:
            ratio = 0.1
    scores = load_scores(table_path, utility)
    plain, strata = _reselect(scores, sources, asked, ratio, count)
    selection, report = _diversify(plain, sources, asked, table_path)
    kept = np.zeros(len(scores), dtype=bool)
    kept[selection.indices] = True
    view = SelectionView(
        sources, utility, ratio, count, scores, selection, kept, table_meta(empty),
        table_record, subset_record, *_record_columns(table_path, schema.names),
        _other_scores(table_path, empty, utility), _labels(sources.labels, len(scores)),
        None, None, None)
    if report is not None:
        view.plain, view.dedup_report = plain, report
    view.threshold, view.strata = asked.get("threshold"), strata
    _read_data(view, asked)
    _check_against_record(view)
    return view


def _reselect(scores: np.ndarray, sources: SelectionSources, asked: dict, ratio: float | None,
              count: int | None) -> tuple[Selection, dict | None]:
    """Top-k, or as the subset's run record says it was chosen: among the records at or above
    its --threshold, spread over its --stratify strata made again (the recorded K, bins or
    field, allocation, within and seed; a field's values from the data)."""
    threshold, recorded = asked.get("threshold"), asked.get("stratify")
    if not recorded:
        return select_top(scores, ratio=ratio, count=count, threshold=threshold), None
    by = recorded.get("by")
    option = {"field": f"field:{recorded.get('field')}", "length": f"length:{recorded.get('bins')}",
              "clusters": f"clusters:{recorded.get('k')}"}.get(by)
    if option is None:
        raise GradfilterError(f"{run_record_path(Path(str(sources.subset)))}: stratify.by is "
                              f"{by!r}; expected field, length or clusters")
    data = data_at_hand(sources, [asked])
    records = None
    if data is not None:
        from ..subset import records_again

        records = records_again(data, sources.split or asked.get("split"), sources.limit)
    elif by == "field":
        raise GradfilterError(f"the subset was stratified by the field {recorded.get('field')!r}: "
                              "give its data (--data) to make the strata again")
    return choose(scores, Path(sources.table), ratio=ratio, count=count, threshold=threshold,
                  stratify=option, allocate=recorded.get("allocation"),
                  within=recorded.get("within"),
                  cluster_features=recorded.get("features") if by == "clusters" else None,
                  seed=int(asked.get("seed") or 0), records=records, where=str(data))


def data_at_hand(sources: SelectionSources, records: list[dict | None]) -> str | None:
    """The data as given (--data), else the first file a run record names that is still
    there."""
    if sources.data is not None:
        return sources.data
    for record in records:
        recorded = (record or {}).get("data")
        if recorded and Path(recorded).exists():
            return recorded
    return None


def _diversify(selection: Selection, sources: SelectionSources, asked: dict,
               table: Path) -> tuple[Selection, DedupReport | None]:
    """The selection with near-duplicates removed, and dedup's report, where dedup was asked
    for or recorded (else the selection as it is, and None)."""
    recorded = asked.get("diversity") or {}
    method = sources.diversity or recorded.get("method") or "none"
    if method == "none":
        return selection, None
    if method != "dedup":
        raise GradfilterError(f"--diversity must be none or dedup, got {method!r}")
    threshold = (sources.diversity_threshold if sources.diversity_threshold is not None
                 else recorded.get("threshold", DEFAULT_THRESHOLD))
    return dedup(selection, partial(load_sketch_features, table), float(threshold))


def _record_columns(table: Path, names: list[str]
                    ) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
    """The table's per-record columns (response and whole token counts, truncation) and the
    unscorable records' reasons."""
    wanted = [c for c in ("n_response_tokens", "n_tokens", "truncated", "skip_reason")
              if c in names]
    if not wanted:
        return {}, []
    columns = load_stats(table, wanted)
    values = {}
    for name in ("n_response_tokens", "n_tokens", "truncated"):
        if name in wanted:
            array = columns.column(name).combine_chunks()
            values[name] = np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)
    reasons: list[tuple[int, str]] = []
    if "skip_reason" in wanted:
        array = columns.column("skip_reason").combine_chunks()
        where = np.flatnonzero(np.asarray(array.is_valid().to_numpy(zero_copy_only=False)))
        reasons = [(int(i), str(array[int(i)].as_py())) for i in where]
    return values, reasons


def _other_scores(table: Path, empty: pa.Table, utility: str) -> dict[str, np.ndarray]:
    """Every other utility and baseline the table gives, and the IFD ratio where stored."""
    others = {name: load_scores(table, name) for name in available_utilities(empty)
              if name != utility}
    if IFD_RATIO in empty.column_names:
        ratio = load_stats(table, [IFD_RATIO]).column(0).combine_chunks()
        others[IFD_RATIO] = np.asarray(ratio.to_numpy(zero_copy_only=False), dtype=np.float64)
    return others


def cheap_baselines(view: SelectionView) -> dict[str, np.ndarray]:
    """The cheap rankings the table holds, each as `select` would rank by it: IFD
    (Superfiltering's, from the stored IFD ratios where the table has no `ifd` column), the
    proxy's loss or perplexity, and response length (the table's tokens where no `length`)."""
    found: dict[str, np.ndarray] = {}
    others = view.other_scores
    for name in CHEAP:
        if name in others and name != view.utility:
            found[name] = others[name]
    if "ifd" not in found and view.utility != "ifd" and IFD_RATIO in others:
        found["ifd (Superfiltering, from ifd_ratio)"] = superfiltering_score(others[IFD_RATIO])
    if ("length" not in found and view.utility != "length"
            and "n_response_tokens" in view.record_columns):
        tokens = view.record_columns["n_response_tokens"].copy()
        tokens[[i for i, _ in view.skip_reasons]] = np.nan  # unscored: no length measured
        found["length (response tokens)"] = tokens
    return found


def _labels(path: Path | None, n: int) -> np.ndarray | None:
    """The corruption kind of every record ("" where clean) from a labels file, one row a
    record in order (as `bench noise` and the demo write them)."""
    if path is None:
        return None
    table = load_labels(Path(path))
    if table.num_rows != n:
        raise GradfilterError(f"{path}: {table.num_rows} labels, but the statistics table has "
                              f"{n} rows")
    kinds = table.column("corruption").to_pylist()
    return np.array(["" if kind is None else str(kind) for kind in kinds], dtype=object)


def load_labels(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path).read()
    except (pa.ArrowException, OSError) as exc:
        raise GradfilterError(f"{path}: not a labels file (Parquet with a 'corruption' "
                              f"column): {exc}") from None
    if "corruption" not in table.column_names:
        raise GradfilterError(f"{path}: no 'corruption' column (the labels bench noise and the "
                              "demo write)")
    return table


def shown_records(view: SelectionView) -> dict[str, np.ndarray]:
    """The records the page shows: the best, those around the cut, the worst (finite scores),
    and the kept record and first removed ones of the largest near-duplicate groups."""
    n, ranked = view.sources.examples, view.selection.ranked
    cut = min(len(view.selection.indices), len(ranked))
    half = n // 2
    groups = {"top": ranked[:n],
              "around the cut": ranked[max(0, cut - half):cut + (n - half)],
              "bottom": ranked[::-1][:n]}
    if view.dedup_report is not None:
        rows = [r for g in view.dedup_report.groups[:GROUPS_SHOWN] for r in
                [g["kept"], *g["removed"][:3]]]
        groups["near-duplicate groups"] = np.array(rows, dtype=np.int64)
    return groups


def _read_data(view: SelectionView, asked: dict) -> None:
    """The data's facts, where the data is given, or recorded and still there."""
    sources = view.sources
    data = data_at_hand(sources, [view.subset_record, view.table_record])
    view.data = data
    if data is None:
        view.data_note = ("the data was not given (--data) and no run record names a file "
                          "that is still there: lengths in characters, turns, fields and the "
                          "records' texts are not shown")
        return
    shown = {int(i) for rows in shown_records(view).values() for i in rows}
    check = DataCheck(table_data(sources.table), data, sources.allow_data_mismatch)
    view.facts = read_facts(data, view.n, shown, sources.fmt, sources.fields,
                            sources.split or asked.get("split"), sources.limit, check.see)
    warning = check.finish().get("data_warning")
    if warning:
        view.notes.append(warning)


def _check_against_record(view: SelectionView) -> None:
    """A note where the subset's run record counts otherwise than the selection made here."""
    record = view.subset_record
    if not record:
        return
    selected = record.get("selected")
    if selected is not None and int(selected) != len(view.selection.indices):
        view.notes.append(f"the subset's run record says {selected} records were kept; the "
                          f"selection made here from the table keeps "
                          f"{len(view.selection.indices)} (was the table rescored since?)")
    recorded = [s.get("taken") for s in (record.get("stratify") or {}).get("strata", [])]
    if view.strata is not None and recorded != [s["taken"] for s in view.strata["strata"]]:
        view.notes.append("the subset's run record took other numbers from its strata than "
                          "the selection made here (was the table rescored since?)")
    removed = (record.get("diversity") or {}).get("removed")
    if (removed is not None and view.dedup_report is not None
            and int(removed) != view.dedup_report.removed):
        view.notes.append(f"the subset's run record says dedup removed {removed}; here it "
                          f"removed {view.dedup_report.removed}")
