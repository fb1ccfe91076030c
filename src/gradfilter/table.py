"""The statistics table: the contract between `score` and `select` (no torch here).

Parquet, one row per input record: the record columns (`index`, `record_id`, `record_hash`,
`n_response_tokens`, `truncated`, `skip_reason`, and in tables written since it was added
`n_tokens`, the tokens the proxy reads: prompt and response after truncation), then the
method's columns. A G-SNR table holds `loss_e{e}_m{m}` and `sqnorm_e{e}_m{m}` for the early
and late epoch and every member, and one column per utility; a baseline's table its score
column(s). Scored with target examples, a G-SNR table also holds `align_e{e}_m{m}` and
`alignmax_e{e}_m{m}` (alignment.py) and the target's fingerprint and directions in its metadata
(`target`); an IFD table scored with them, `rds` and `rds_mean` (RDS+) and the target's
fingerprint. The schema metadata key `gradfilter` holds JSON: the method, the utility `select`
ranks by unless told, the epochs, the members, the config and the data's fingerprint
(`data_fingerprint`; with `record_id` and `record_hash`, what `binding` checks the data
against: see `data.identity`).

Every utility is a function of one record's row, so `load_scores` reads only the columns a
utility needs, batch by batch: memory holds 8 bytes a record and one batch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .alignment import ALIGN_STATS, alignments, target_direction
from .config import ScoreConfig
from .data.identity import Identities
from .data.sources import parquet_error
from .errors import GradfilterError
from .outputs import atomic_path
from .utilities import (
    BASELINE_SCORES,
    DEFAULT_UNGATED,
    DEFAULT_UTILITY,
    DIRECTIONS,
    FORMULAS,
    RDS_SCORES,
    TARGET_UTILITY,
    UTILITIES,
    RawStats,
    computable,
    stats_utilities,
    stored_score,
)

META_KEY = "gradfilter"
_SQNORM = re.compile(r"^sqnorm_e(\d+)_m(\d+)$")
_STATS_BATCH_ROWS = 1 << 16
RECORD_ID, RECORD_HASH = "record_id", "record_hash"  # data.identity: which record a row is
DATA_FINGERPRINT = "data_fingerprint"  # metadata: which data the table was scored on
IFD_RATIO = "ifd_ratio"  # PPL(y|x) / PPL(y) by the proxy before training (the gated utilities)
NOT_A_TABLE = "not a Parquet statistics table (the file `gradfilter score` writes)"
_SKETCH = re.compile(r"^sketch_e(\d+)_m(\d+)$")
_ALIGN = re.compile(r"^(align|alignmax)_e(\d+)_m(\d+)$")
SKETCH_STORAGE = ("sketch_e{e}_m{m}: unit vector, float16; sketchnorm_e{e}_m{m}: its length, "
                  "float32; the sketch is their product")


# --- writing -------------------------------------------------------------------------------

def record_columns(n_records: int, n_response_tokens: np.ndarray, truncated: np.ndarray,
                   skip_reasons: list[str | None],
                   n_tokens: np.ndarray | None = None) -> dict[str, pa.Array]:
    """The columns every statistics table starts with, whatever the method (`with_identities`
    adds the records' IDs after `index`; `n_tokens`, each record's whole token count, where
    given: what the cost of scoring and fine-tuning counts)."""
    columns = {
        "index": pa.array(np.arange(n_records, dtype=np.int64)),
        "n_response_tokens": pa.array(n_response_tokens.astype(np.int32)),
        "truncated": pa.array(truncated.astype(bool)),
        "skip_reason": pa.array(skip_reasons, type=pa.string()),
    }
    if n_tokens is not None:
        columns["n_tokens"] = pa.array(np.asarray(n_tokens).astype(np.int32))
    return columns


def gsnr_table(head: dict[str, pa.Array], scorable: np.ndarray, losses: dict[int, np.ndarray],
               sqnorms: dict[int, np.ndarray], config: ScoreConfig,
               sketches: dict[int, np.ndarray] | None = None,
               sketch_meta: dict | None = None,
               ifd_ratio: np.ndarray | None = None,
               target_sketches: dict[int, np.ndarray] | None = None,
               target_meta: dict | None = None) -> pa.Table:
    """`head`, then each collected epoch's [scorable examples, members] losses and squared
    norms spread over all records (NaN where unscored), the IFD ratios ([records], if given),
    the alignments with the target examples (with `target_sketches`, [target examples,
    members, dim] per epoch), then every utility, then (with `sketches`, [scorable examples,
    members, dim] per epoch) the gradient sketches."""
    n_records = len(head["index"])
    columns = dict(head)
    for epoch in (config.early, config.late):
        for name, values in (("loss", losses[epoch]), ("sqnorm", sqnorms[epoch])):
            for m in range(config.members):
                full = np.full(n_records, np.nan)
                full[scorable] = values[:, m]
                columns[f"{name}_e{epoch}_m{m}"] = pa.array(full)
    if ifd_ratio is not None:
        columns[IFD_RATIO] = pa.array(ifd_ratio, type=pa.float64())
    if target_sketches:
        if not sketches:
            raise ValueError("alignment with target examples needs the pool's sketches")
        columns.update(alignment_columns(sketches, target_sketches, scorable, n_records))
    meta = {"method": "gsnr", "early": config.early, "late": config.late,
            "members": config.members, "config": asdict(config),
            "directions": {"loss": "lowest late-epoch loss first",
                           "every other utility": "highest first"}}
    if sketches:
        meta["sketch"] = {**(sketch_meta or {}), "stored": SKETCH_STORAGE}
    if target_sketches:
        meta["target"] = {**(target_meta or {}), "direction": {
            str(e): target_direction(t).tolist() for e, t in sorted(target_sketches.items())},
            "direction_is": "per collected epoch, [member][dim]: the mean of the target "
                            "examples' sketches (float32 sketches, before storage)"}
    table = with_utilities(with_meta(pa.table(columns), meta))
    for epoch in sorted(sketches or {}):
        for m in range(config.members):
            for name, column in sketch_columns(sketches[epoch][:, m], scorable,
                                               n_records).items():
                table = table.append_column(f"{name}_e{epoch}_m{m}", column)
    return table


def alignment_columns(sketches: dict[int, np.ndarray], target_sketches: dict[int, np.ndarray],
                      scorable: np.ndarray, n_records: int) -> dict[str, pa.Array]:
    """`align_e{e}_m{m}` and `alignmax_e{e}_m{m}` of every record (NaN where unscored), from
    the float32 sketches of the scorable pool records and of the target examples."""
    columns = {}
    for epoch in sorted(target_sketches):
        values = alignments(sketches[epoch], target_sketches[epoch])
        for name, per_member in zip(ALIGN_STATS, values, strict=True):
            for m in range(per_member.shape[1]):
                full = np.full(n_records, np.nan)
                full[scorable] = per_member[:, m]
                columns[f"{name}_e{epoch}_m{m}"] = pa.array(full)
    return columns


def sketch_columns(values: np.ndarray, scorable: np.ndarray,
                   n_records: int) -> dict[str, pa.Array]:
    """One member's sketches at one epoch ([scorable examples, dim] float32) as the two columns
    a table stores: `sketch` (the unit direction, float16, null where unscored) and
    `sketchnorm` (its length, float32, NaN where unscored); a zero sketch stays zero."""
    dim = values.shape[1]
    norms = np.linalg.norm(values.astype(np.float64), axis=1)
    units = np.zeros((n_records, dim), dtype=np.float16)
    units[scorable] = values / np.where(norms > 0, norms, 1.0)[:, None]
    valid = np.zeros(n_records, dtype=bool)
    valid[scorable] = True
    full_norms = np.full(n_records, np.nan, dtype=np.float32)
    full_norms[scorable] = norms
    flat = pa.array(units.reshape(-1))
    mask = pa.array(~valid)
    return {"sketch": pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask),
            "sketchnorm": pa.array(full_norms)}


def baseline_table(head: dict[str, pa.Array], columns: dict[str, np.ndarray], method: str,
                   config: ScoreConfig, target_meta: dict | None = None) -> pa.Table:
    """`head` and a baseline's score columns; `select` ranks by the method's own column, or
    by `rds` where the table was scored with target examples (`target_meta`: what they were,
    stored as the table's `target`)."""
    table = pa.table({**head, **{name: pa.array(v) for name, v in columns.items()}})
    offered = [u for u in (*BASELINE_SCORES, *RDS_SCORES, "loss")
               if stored_score(u)[0] in columns]
    meta = {"method": method, "utility": method, "config": asdict(config),
            "directions": {u: DIRECTIONS[u] for u in offered}}
    if target_meta is not None:
        meta.update(utility=RDS_SCORES[0], target=target_meta)
    return with_meta(table, meta)


def with_meta(table: pa.Table, meta: dict) -> pa.Table:
    return table.replace_schema_metadata({META_KEY: json.dumps(meta)})


def with_more_meta(table: pa.Table, **entries: object) -> pa.Table:
    """The table with `entries` added to its metadata."""
    return with_meta(table, {**table_meta(table), **entries})


def with_identities(table: pa.Table, identities: Identities) -> pa.Table:
    """The table bound to its data: every record's ID and content hash after `index`, the
    data's fingerprint in the metadata (see `data.identity` and `binding`)."""
    if len(identities) != table.num_rows:
        raise ValueError(f"{len(identities)} record identities for {table.num_rows} rows")
    table = table.add_column(1, RECORD_ID, pa.array(identities.ids, type=pa.string()))
    table = table.add_column(2, RECORD_HASH, pa.array(identities.hashes, type=pa.string()))
    return with_more_meta(table, **{DATA_FINGERPRINT: identities.fingerprint})


def write_table(table: pa.Table, path: Path) -> None:
    """The table to `path` (Parquet), atomically, with a checksum on every page (checked on
    every read: a flipped bit in a stored score is an error, not another selection)."""
    with atomic_path(path) as tmp:  # row groups of one read batch: reads stream by row group
        pq.write_table(table, tmp, row_group_size=_STATS_BATCH_ROWS, write_page_checksum=True)


# --- what a table holds ----------------------------------------------------------------------

def table_meta(table: pa.Table) -> dict:
    meta = (table.schema.metadata or {}).get(META_KEY.encode())
    return json.loads(meta) if meta else {}


def column_name(utility: str) -> str:
    """`gsnr-cv` is stored as column `gsnr_cv`."""
    return utility.replace("-", "_")


def table_epochs(table: pa.Table) -> tuple[int, int]:
    """(early, late) from the table's metadata, else the smallest and largest epoch present."""
    info = table_meta(table)
    if "early" in info:
        return int(info["early"]), int(info["late"])
    epochs = sorted({int(m.group(1)) for c in table.column_names if (m := _SQNORM.match(c))})
    if len(epochs) < 2:
        raise GradfilterError("the statistics table needs sqnorm columns for two epochs")
    return epochs[0], epochs[-1]


def stat_columns(names: list[str], stat: str, epoch: int) -> list[str]:
    """`{stat}_e{epoch}_m{m}` (stat: sqnorm or loss) of every member m present, in order."""
    members = sorted(int(m.group(2)) for c in names
                     if (m := _SQNORM.match(c)) and int(m.group(1)) == epoch)
    if not members:
        raise GradfilterError(f"the statistics table has no sqnorm columns for epoch {epoch}")
    columns = [f"{stat}_e{epoch}_m{m}" for m in members]
    missing = [c for c in columns if c not in names]
    if missing:
        raise GradfilterError(f"the statistics table has no column {missing[0]}")
    return columns


def raw_stats_columns(names: list[str], early: int, late: int, with_loss: bool,
                      with_ifd: bool = False, with_target: bool = False) -> dict[str, list[str]]:
    """The columns of each field of `RawStats`, by field name."""
    fields = {"sqnorm_early": ("sqnorm", early), "sqnorm_late": ("sqnorm", late)}
    if with_loss:
        fields.update(loss_early=("loss", early), loss_late=("loss", late))
    if with_target:
        fields.update(align_early=("align", early), align_late=("align", late),
                      align_max_early=("alignmax", early), align_max_late=("alignmax", late))
    columns = {name: stat_columns(names, stat, epoch) for name, (stat, epoch) in fields.items()}
    if with_ifd:
        columns["ifd_ratio"] = [IFD_RATIO]
    return columns


def raw_stats(columns: dict[str, list[str]], column) -> RawStats:
    """`RawStats` from `column(name) -> float64 array` over `raw_stats_columns`' columns."""
    return RawStats(**{field: np.stack([column(c) for c in names], axis=1)
                       for field, names in columns.items()})


def _needed_columns(names: list[str], early: int, late: int,
                    utilities: tuple[str, ...]) -> dict[str, list[str]]:
    """The columns of each `RawStats` field that `utilities` need."""
    return raw_stats_columns(names, early, late,
                             any(FORMULAS[n].needs_loss for n in utilities),
                             any(FORMULAS[n].needs_ifd for n in utilities),
                             any(FORMULAS[n].needs_target for n in utilities))


def _utilities_of(table: pa.Table, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    early, late = table_epochs(table)
    columns = _needed_columns(table.column_names, early, late, names)
    stats = raw_stats(columns, lambda c: _as_float64(table.column(c).combine_chunks()))
    return _computed(stats, names)


def _computed(stats: RawStats, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    return stats_utilities(stats, names)


def _computable_from(names: set[str] | list[str]) -> tuple[str, ...]:
    """The utilities a G-SNR table with these columns gives."""
    has_loss = any(c.startswith("loss_e") for c in names)
    has_target = any(_ALIGN.match(c) for c in names)
    return tuple(u for u in UTILITIES
                 if computable(u, has_loss, IFD_RATIO in names, has_target))


def default_utility(table: pa.Table) -> str:
    """What `select` ranks by unless told: the baseline that made the table, else
    DEFAULT_UTILITY (DEFAULT_UNGATED where the table has no IFD ratios; TARGET_UTILITY where
    it was scored with target examples; the first utility it holds where it holds stored
    scores only)."""
    made_by = table_meta(table).get("utility")
    if made_by is not None:
        return made_by
    offered = available_utilities(table)
    for name in (TARGET_UTILITY, DEFAULT_UTILITY, DEFAULT_UNGATED):
        if name in offered:
            return name
    return offered[0] if offered else DEFAULT_UTILITY


def available_utilities(table: pa.Table) -> list[str]:
    names = set(table.column_names)
    baseline = [u for u in (*BASELINE_SCORES, *RDS_SCORES) if stored_score(u)[0] in names]
    if any(_SQNORM.match(c) for c in names):
        return [*_computable_from(names), *baseline]
    return baseline + [u for u in UTILITIES if column_name(u) in names]


def require_utility(table: pa.Table, utility: str) -> None:
    """A clear error unless `table` (its columns are enough) can give `utility`."""
    offered = available_utilities(table)
    if not offered:
        raise GradfilterError("the statistics table holds no scores: neither sqnorm columns "
                              "nor a baseline's score column")
    if utility not in offered:
        raise GradfilterError(f"the statistics table has no utility {utility!r}; it offers "
                              f"{offered}")


def with_utilities(table: pa.Table) -> pa.Table:
    """The table with one column per utility, replacing any that are there."""
    for utility, values in _utilities_of(table, _computable_from(table.column_names)).items():
        name = column_name(utility)
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, pa.array(values))
    return table


def utility_scores(table: pa.Table, utility: str) -> np.ndarray:
    """Scores for one utility: the stored column, else computed from the raw statistics."""
    require_utility(table, utility)
    name, sign = stored_score(utility)
    if name in table.column_names:
        return sign * _as_float64(table.column(name).combine_chunks())
    return _utilities_of(table, (utility,))[utility]


# --- reading ---------------------------------------------------------------------------------

def load_stats(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The statistics table (only `columns` of it, if given), with its metadata."""
    path = Path(path)
    table_file = open_table(path)
    try:
        # ParquetFile.read, not pq.read_table: the latter brings in pyarrow.dataset and pandas.
        return table_file.read(columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise _read_error(path, exc) from exc


def load_scores(stats: str | Path | pa.Table | np.ndarray, utility: str) -> np.ndarray:
    """One utility per record (NaN where unscored): from a table file, only the columns it
    needs (its stored column, else the squared-norm columns), batch by batch."""
    if isinstance(stats, np.ndarray):  # the scores themselves, read already
        return stats.astype(np.float64, copy=False)
    if isinstance(stats, pa.Table):
        return utility_scores(stats, utility)
    path = Path(stats)
    # Column chunks streamed in 1 MiB reads, not buffered whole: a lower peak.
    table_file = open_table(path, buffer_size=1 << 20, pre_buffer=False)
    try:
        schema = table_file.schema_arrow
        scores = np.empty(table_file.metadata.num_rows, dtype=np.float64)
        stored, sign = stored_score(utility)
        if stored in schema.names:
            for start, batch in _stat_batches(table_file, [stored]):
                scores[start:start + batch.num_rows] = sign * _as_float64(batch.column(0))
            return scores
        empty = pa.Table.from_batches([], schema=schema)  # (schema.empty_table imports pandas)
        require_utility(empty, utility)
        early, late = table_epochs(empty)
        columns = _needed_columns(schema.names, early, late, (utility,))
        needed = [c for names in columns.values() for c in names]
        for start, batch in _stat_batches(table_file, needed):
            stats = raw_stats(columns, lambda c, b=batch: _as_float64(b.column(c)))
            scores[start:start + batch.num_rows] = _computed(stats, (utility,))[utility]
        return scores
    except (pa.ArrowException, OSError) as exc:
        raise _read_error(path, exc) from exc


def _read_error(path: Path, exc: Exception) -> GradfilterError:
    """A page whose checksum does not match is damage, said plainly; else what parquet_error
    finds in the file."""
    if "checksum" in str(exc).lower():
        return GradfilterError(f"{path}: the statistics table is damaged: a page's checksum "
                               "does not match its bytes (a flipped bit on disk or in a copy); "
                               "restore the file or score again")
    return parquet_error(path, exc, NOT_A_TABLE)


def table_utility(stats: str | Path | pa.Table | np.ndarray) -> str:
    """What a table ranks by unless told: the baseline that made it, else gsnr."""
    if isinstance(stats, pa.Table):
        return default_utility(stats)
    if isinstance(stats, np.ndarray):
        return "gsnr"
    schema = open_table(Path(stats)).schema_arrow
    return default_utility(pa.Table.from_batches([], schema=schema))


def open_table(path: Path, **options) -> pq.ParquetFile:
    """The statistics table at `path`, opened: a one-line error if it is missing, is not
    Parquet (a dataset given in its place, a file cut off), or holds no score column."""
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "nothing"
        raise GradfilterError(f"{path}: no such statistics table (found {kind} there)")
    try:  # pages written with a checksum are checked against it (older tables have none)
        table_file = pq.ParquetFile(path, page_checksum_verification=True, **options)
    except (pa.ArrowException, OSError) as exc:
        raise parquet_error(path, exc, NOT_A_TABLE) from exc
    schema = table_file.schema_arrow
    if not available_utilities(pa.Table.from_batches([], schema=schema)):
        shown = ", ".join(schema.names[:8]) + (", ..." if len(schema.names) > 8 else "")
        raise GradfilterError(
            f"{path}: not a statistics table: it holds no scores: neither sqnorm columns nor a "
            f"baseline's score column; its columns: {shown or 'none'} (a dataset?)")
    scores = {*map(column_name, UTILITIES), *BASELINE_SCORES, *map(column_name, RDS_SCORES)}
    for column in schema:
        numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
        stat = _SQNORM.match(column.name) or _ALIGN.match(column.name)
        if (column.name in scores or stat) and not numeric:
            raise GradfilterError(f"{path}: not a statistics table: column {column.name!r} "
                                  f"holds {column.type}, expected numbers")
    return table_file
def sketch_member_columns(names: list[str], epoch: int) -> list[str]:
    """`sketch_e{epoch}_m{m}` of every member m present, in member order."""
    members = sorted(int(m.group(2)) for c in names
                     if (m := _SKETCH.match(c)) and int(m.group(1)) == epoch)
    if not members:
        which = f" for epoch {epoch}" if any(_SKETCH.match(c) for c in names) else ""
        raise GradfilterError(f"the statistics table has no gradient sketches{which} (scored "
                              "with --sketch-dim 0, or by a baseline); --diversity needs them")
    return [f"sketch_e{epoch}_m{m}" for m in members]


def load_sketch_features(stats: str | Path | pa.Table, records: np.ndarray) -> np.ndarray:
    """The late-epoch unit sketches of `records` (0-based rows), members side by side and
    scaled by 1/sqrt(M): [len(records), M * dim] float16, so that a dot product is the mean
    over members of the cosine. Read batch by batch, holding only the rows asked for."""
    if isinstance(stats, pa.Table):
        schema, batches = stats.schema, lambda cols: _table_batches(stats, cols)
    else:
        path = Path(stats)
        try:
            table_file = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False,
                                        page_checksum_verification=True)
        except (pa.ArrowInvalid, OSError) as exc:
            raise GradfilterError(f"{path}: not a Parquet statistics table: {exc}") from None
        schema, batches = table_file.schema_arrow, partial(_checked_batches, table_file, path)
    late = table_meta(pa.Table.from_batches([], schema=schema)).get("late")
    if late is None:  # no metadata: the latest epoch with sketches
        late = max((int(m.group(1)) for c in schema.names if (m := _SKETCH.match(c))),
                   default=0)
    columns = sketch_member_columns(schema.names, int(late))
    dim = schema.field(columns[0]).type.list_size
    where = np.full(int(records.max()) + 1 if len(records) else 0, -1, dtype=np.int64)
    where[records] = np.arange(len(records))
    out = np.zeros((len(records), len(columns) * dim), dtype=np.float16)
    scale = np.float32(1 / math.sqrt(len(columns)))
    for start, batch in batches(columns):
        position = where[start:start + batch.num_rows]
        wanted = np.flatnonzero(position >= 0)
        if not len(wanted):
            continue
        for k in range(len(columns)):
            rows = _unit_sketches(batch.column(k), dim, wanted)
            out[position[wanted], k * dim:(k + 1) * dim] = rows * scale
    return out


def _unit_sketches(array: pa.Array, dim: int, wanted: np.ndarray) -> np.ndarray:
    """Rows `wanted` of a fixed-size list column of float16 sketches as [rows, dim] float32,
    zeros where null. Read from the Arrow buffer: pyarrow's own float16 conversion goes
    through Python objects."""
    child = array.values  # the list slots' values, the null ones included (fixed size)
    values = np.frombuffer(child.buffers()[1], dtype=np.float16,
                           count=(child.offset + len(child)))[child.offset:]
    values = values[array.offset * dim:(array.offset + len(array)) * dim]
    rows = values.reshape(len(array), dim)[wanted].astype(np.float32)
    if array.null_count:
        rows[np.asarray(array.is_null().to_numpy(zero_copy_only=False))[wanted]] = 0
    return rows


def _table_batches(table: pa.Table, columns: list[str]):
    start = 0
    for batch in table.select(columns).to_batches(max_chunksize=_STATS_BATCH_ROWS):
        yield start, batch
        start += batch.num_rows


def _checked_batches(table_file: pq.ParquetFile, path: Path, columns: list[str]):
    try:
        yield from _stat_batches(table_file, columns)
    except (pa.ArrowException, OSError) as exc:
        raise _read_error(path, exc) from exc


def _stat_batches(table_file: pq.ParquetFile, columns: list[str]):
    start = 0
    for batch in table_file.iter_batches(batch_size=_STATS_BATCH_ROWS, columns=columns):
        yield start, batch
        start += batch.num_rows


def _as_float64(array: pa.Array) -> np.ndarray:
    """A numeric column as float64, NaN where null. Read from the Arrow buffers: pyarrow's own
    conversion imports pandas (tens of MB) just to do this."""
    if not pa.types.is_float64(array.type):
        array = array.cast(pa.float64())
    if len(array) == 0:
        return np.zeros(0, dtype=np.float64)
    validity, data = array.buffers()[:2]
    values = np.frombuffer(data, dtype=np.float64, count=len(array), offset=array.offset * 8)
    values = values.copy()
    if array.null_count:
        bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
        values[~bits[array.offset:array.offset + len(array)].astype(bool)] = np.nan
    return values


# --- columns for stratified selection (strata, clusters) --------------------------------------

def table_column_names(stats: str | Path | pa.Table) -> list[str]:
    """The columns of a statistics table (a path is opened for its schema only)."""
    if isinstance(stats, pa.Table):
        return list(stats.column_names)
    return list(open_table(Path(stats)).schema_arrow.names)


def table_rows(stats: str | Path | pa.Table) -> int:
    """How many records a statistics table holds (a path: from its footer)."""
    if isinstance(stats, pa.Table):
        return stats.num_rows
    return open_table(Path(stats)).metadata.num_rows


def stats_meta(stats: str | Path | pa.Table) -> dict:
    """The table's `gradfilter` metadata (a path is opened for its schema only)."""
    if isinstance(stats, pa.Table):
        return table_meta(stats)
    schema = open_table(Path(stats)).schema_arrow
    return table_meta(pa.Table.from_batches([], schema=schema))


def sketch_epochs(names: list[str]) -> list[int]:
    """The epochs whose gradient sketches the table holds, in order."""
    return sorted({int(m.group(1)) for c in names if (m := _SKETCH.match(c))})


def recorded_epochs(names: list[str]) -> list[int]:
    """The epochs whose squared norms the table holds, in order (none for a baseline's)."""
    return sorted({int(m.group(1)) for c in names if (m := _SQNORM.match(c))})


def load_columns(stats: str | Path | pa.Table, columns: list[str]) -> np.ndarray:
    """Numeric `columns` of every record as [records, len(columns)] float32 (NaN where null),
    read batch by batch: memory holds the result and one batch."""
    if isinstance(stats, pa.Table):
        rows, batches = stats.num_rows, lambda: _table_batches(stats, columns)
        path = None
    else:
        path = Path(stats)
        table_file = open_table(path, buffer_size=1 << 20, pre_buffer=False)
        rows, batches = table_file.metadata.num_rows, partial(_stat_batches, table_file, columns)
    out = np.empty((rows, len(columns)), dtype=np.float32)
    try:
        for start, batch in batches():
            for k in range(len(columns)):
                out[start:start + batch.num_rows, k] = _as_float64(batch.column(k))
    except (pa.ArrowException, OSError) as exc:
        if path is None:
            raise
        raise parquet_error(path, exc, NOT_A_TABLE) from exc
    return out


def project_sketches(stats: str | Path | pa.Table, epoch: int,
                     planes: np.ndarray) -> np.ndarray:
    """Every record's sketch features at `epoch` (as `load_sketch_features` makes them: the
    members' unit sketches side by side, scaled by 1/sqrt(M)) times `planes` ([M * dim, D]):
    [records, D] float32, zeros where unscored. Read batch by batch, so memory holds the
    result and one batch, never the sketches of every record."""
    if isinstance(stats, pa.Table):
        schema, rows = stats.schema, stats.num_rows
        batches = partial(_table_batches, stats)
    else:
        table_file = open_table(Path(stats), buffer_size=1 << 20, pre_buffer=False)
        schema, rows = table_file.schema_arrow, table_file.metadata.num_rows
        batches = partial(_stat_batches, table_file)
    columns = sketch_member_columns(schema.names, epoch)
    dim = schema.field(columns[0]).type.list_size
    if planes.shape[0] != len(columns) * dim:
        raise ValueError(f"planes have {planes.shape[0]} rows for {len(columns)} x {dim}")
    out = np.zeros((rows, planes.shape[1]), dtype=np.float32)
    scale = np.float32(1 / math.sqrt(len(columns)))
    for start, batch in batches(columns):
        everyone = np.arange(batch.num_rows)
        for k in range(len(columns)):
            units = _unit_sketches(batch.column(k), dim, everyone)
            out[start:start + batch.num_rows] += units @ (planes[k * dim:(k + 1) * dim] * scale)
    return out
