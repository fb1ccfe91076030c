"""Where the fine-tune benchmark's inputs come from (bench/finetune.py): the pool and each
method's scores (a `bench noise` output directory, or a pool file and its statistics tables), the
held-out set (a file of references, or a seeded share of the clean records split by
conversation), and which pool records may be selected."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import ScoreConfig
from ..errors import GradfilterError
from ..scoring.tokenization import Encoded
from ..seeds import HELD_OUT_STREAM, derived_seed
from .selectors import DEFAULT_BALANCE_FIELD, SelectorInputs, is_selector


@dataclass(frozen=True)
class FinetuneInputs:
    """The pool (token ids and masks, every record), the held-out set, each method's scores over
    the pool's records, which pool records may be kept (not held out, scorable), and where the
    inputs came from (for the report)."""

    pool: list[Encoded]
    held_out: list[Encoded]
    scores: dict[str, np.ndarray]
    usable: np.ndarray  # bool per pool record
    source: dict
    digest: str  # of the tokenised pool and held-out set, for the run keys
    sketches: str | None = None  # a table with gradient sketches of the pool (for --dedup)
    held_out_records: tuple[int, ...] = ()  # the pool records held out (none: a --held-out file)
    selectors: tuple[str, ...] = ()  # coverage, s2l, balanced_random: subsets, not scores
    chooser: SelectorInputs | None = None  # what the selectors read (a table, a field's values)


def inputs_from_noise(noise_dir: Path, methods: Sequence[str] | None, target: ScoreConfig,
                      held_out: Path | None, held_out_share: float, seed: int,
                      corrupt_seed: int | None = None, group_field: str | None = None,
                      allow_data_mismatch: bool = False, log=print,
                      balance_field: str | None = None) -> FinetuneInputs:
    """The noise benchmark's mixed set as the pool and its tables as the methods' scores
    (selection on noisy data); held out: `held_out` (a file of prompts with reference answers)
    or a seeded share of the clean records, taken out of the pool (evaluation on clean
    references), by conversation where the benchmark's data carries conversation ids. Each
    table must have been scored on the mixed set (`binding`), unless `allow_data_mismatch`.
    Selectors among `methods` (by default those the noise run measured) read its G-SNR table
    and, for balanced_random, `balance_field` of its data's records."""
    from ..binding import require_table_of
    from ..data.dataset import read_dataset
    from ..table import load_stats, utility_scores
    from .noise import run_table

    noise = json.loads(_read_text(noise_dir / "results.json"))
    draw = noise["seeds"][str(noise["corrupt_seeds"][0] if corrupt_seed is None
                               else corrupt_seed)]
    pool = read_dataset(noise_dir / draw["mixed"])
    import pyarrow.parquet as pq

    labels = pq.ParquetFile(noise_dir / draw["labels"]).read(["source_index", "corruption"])
    clean = np.array([label is None for label in labels.column("corruption").to_pylist()])
    measured = draw.get("selectors") or {}
    chosen = list(methods) if methods else [*draw["tables"], *measured]
    rankers = [m for m in chosen if not is_selector(m)]
    missing = [m for m in rankers if m not in draw["tables"]]
    if missing:
        raise GradfilterError(f"{noise_dir}: the noise benchmark has no table for {missing}; "
                              f"it has {list(draw['tables'])}")
    tables = {m: run_table(noise_dir, path) for m, path in draw["tables"].items()}
    loaded = {path: load_stats(path) for path in {tables[m] for m in rankers}}
    for path, table in loaded.items():
        require_table_of(table, path, pool.records, pool.path, allow_data_mismatch, log)
    scores = {m: utility_scores(loaded[tables[m]], m) for m in rankers}
    selectors = tuple(m for m in chosen if is_selector(m))
    field = balance_field or next((v["field"] for v in measured.values() if "field" in v),
                                  DEFAULT_BALANCE_FIELD)
    chooser = SelectorInputs(
        table=trajectory_table(tables.values()), field=field, seed=seed,
        values=_noise_values(noise["data"], labels.column("source_index").to_numpy(), field)
        if "balanced_random" in selectors else None)
    source = {"data": str(noise_dir / draw["mixed"]), "noise_benchmark": str(noise_dir),
              "corrupted": int((~clean).sum())}
    groups = _noise_groups(noise["data"], labels.column("source_index").to_numpy(),
                           group_field, log)
    inputs = _inputs(pool, scores, target, held_out, held_out_share, seed, clean, source, groups)
    return replace(inputs, sketches=_sketched_table(tables.values()), selectors=selectors,
                   chooser=chooser)


def _noise_values(data: str, source_index: np.ndarray, field: str) -> list[object]:
    """balanced_random's field of each mixed record, from the record of the noise benchmark's
    data it came from (the mixed set keeps the conversation only)."""
    from ..data.dataset import read_dataset
    from ..strata import field_values

    if not Path(data).exists():
        raise GradfilterError(f"balanced_random: the noise benchmark's data {data} is not found "
                              f"here (its records carry the field {field!r})")
    values = field_values(read_dataset(data).records, field)
    return [values[int(i)] for i in source_index]


def inputs_from_pool(pool_path: str, tables: dict[str, str], target: ScoreConfig,
                     held_out: Path | None, held_out_share: float, seed: int,
                     group_field: str | None = None, allow_data_mismatch: bool = False,
                     log=print, selectors: Sequence[str] = (),
                     selector_table: str | None = None,
                     balance_field: str = DEFAULT_BALANCE_FIELD) -> FinetuneInputs:
    """A pool file and the statistics tables of the methods to compare (scored on that pool,
    checked by `binding` unless `allow_data_mismatch`); `selectors` read `selector_table` (by
    default the first of `tables` with training trajectories) and, for balanced_random,
    `balance_field` of the pool's records."""
    from ..binding import require_table_of
    from ..data.dataset import read_dataset
    from ..strata import field_values
    from ..table import load_stats, table_utility, utility_scores

    pool = read_dataset(pool_path)
    scores = {}
    for method, path in tables.items():
        table = load_stats(path)
        if table.num_rows != len(pool.records):
            raise GradfilterError(f"{path}: {table.num_rows} rows, but the pool {pool_path} has "
                                  f"{len(pool.records)} records")
        require_table_of(table, path, pool.records, pool_path, allow_data_mismatch, log)
        utility = method if method in _offered(table) else table_utility(table)
        scores[method] = utility_scores(table, utility)
    groups = record_groups(pool.records, group_field, str(pool_path))
    inputs = _inputs(pool, scores, target, held_out, held_out_share, seed,
                     np.ones(len(pool.records), dtype=bool), {"data": str(pool_path)}, groups)
    chooser = SelectorInputs(
        table=selector_table or trajectory_table(tables.values()), field=balance_field,
        seed=seed, values=field_values(pool.records, balance_field)
        if "balanced_random" in selectors else None)
    return replace(inputs, sketches=_sketched_table(tables.values()),
                   selectors=tuple(selectors), chooser=chooser)


@dataclass(frozen=True)
class Groups:
    """Each pool record's group (its conversation; None: a group of its own) and the field
    it came from; `field` None: no group ids, the split is by record."""

    ids: list[str | None] | None
    field: str | None
    note: str = ""  # why ids found by shape were not used

    def of(self, records) -> list[str | None]:
        """The same field's groups of other records (the held-out file's)."""
        from ..data.exchanges import conversation_ids

        if self.field is None:
            return [None] * len(records)
        return conversation_ids([r.data.get(self.field) if r.error is None else None
                                 for r in records])


def record_groups(records, field: str | None, where: str) -> Groups:
    """The group of every record: `field`'s value when given (every record must carry it),
    else found by shape: `source` when every record's is an exchange origin
    (`<conversation>#<turn>`, as benchmarks/data/sharegpt_pairs.py writes), or `id` where ids tie
    records together (ShareGPT's split conversations `<id>_<n>`). A conversation's exchanges
    and chunks share one group (`conversation_ids`)."""
    from ..data.exchanges import conversation_ids, is_exchange_origin

    data = [r.data if r.error is None else {} for r in records]
    if field is not None:
        lacking = next((r.index for r, d in zip(records, data, strict=True)
                        if r.error is None and d.get(field) is None), None)
        if lacking is not None:
            raise GradfilterError(f"{where}: record {lacking} has no {field!r} field "
                                  "(--group-field)")
        return Groups(conversation_ids([d.get(field) for d in data]), field)
    sources = [d.get("source") for d in data if d]
    if sources and all(is_exchange_origin(v) for v in sources):
        return _plausible(Groups(conversation_ids([d.get("source") for d in data]), "source"))
    ids = conversation_ids([d.get("id") for d in data])
    named = [g for g in ids if g is not None]
    if len(set(named)) < len(named):
        return _plausible(Groups(ids, "id"))
    return Groups(None, None)


LARGEST_CONVERSATION = 0.1  # of the records: beyond it, ids found by shape are not chats


def _plausible(found: Groups) -> Groups:
    """Ids found by shape, unless one of them names more than a tenth of the records (ids
    numbered `task_0`, `task_1`, ... read like one chat's chunks): then none, saying why."""
    assert found.ids is not None
    largest = max(Counter(g for g in found.ids if g is not None).values(), default=0)
    if largest <= max(2, LARGEST_CONVERSATION * len(found.ids)):
        return found
    return Groups(None, None, f"the {found.field!r} values read as conversation ids put "
                              f"{largest} of {len(found.ids)} records in one; give "
                              "--group-field to split by a field")


def _noise_groups(data: str, source_index: np.ndarray, group_field: str | None,
                  log) -> Groups:
    """The mixed set's groups, from the records of the noise benchmark's data that each mixed
    record came from (the mixed set keeps the conversation only)."""
    from ..data.dataset import read_dataset

    if not Path(data).exists():
        if group_field is not None:
            raise GradfilterError(f"--group-field {group_field}: the noise benchmark's data "
                                  f"{data} is not found here (its records carry the field)")
        log(f"the noise benchmark's data {data} is not found here: the held-out split is by "
            "record, not by conversation")
        return Groups(None, None)
    found = record_groups(read_dataset(data).records, group_field, data)
    if found.ids is None:
        return found
    return Groups([found.ids[int(i)] for i in source_index], found.field)


def split_by_group(candidates: np.ndarray, groups: Sequence[str | None] | None, share: float,
                   seed: int) -> np.ndarray:
    """The held-out records (sorted pool positions): whole groups of `candidates`, in an order
    seeded by (seed, 19), until they hold `round(share * len(candidates))` records. A record
    with no group (or no groups at all) is a group of its own, so that without groups this is
    a seeded share of the records."""
    wanted = round(share * len(candidates))
    members: dict[tuple[str, object], list[int]] = {}
    for i in candidates:
        group = None if groups is None else groups[i]
        members.setdefault(("record", int(i)) if group is None else ("group", group),
                           []).append(int(i))
    ordered = list(members.values())
    taken: list[int] = []
    for g in np.random.default_rng(derived_seed(seed, HELD_OUT_STREAM)).permutation(len(ordered)):
        if len(taken) >= wanted:
            break
        taken.extend(ordered[g])
    return np.sort(np.array(taken, dtype=np.int64))


def _sketched_table(paths) -> str | None:
    """The first of `paths` whose table holds gradient sketches."""
    import pyarrow.parquet as pq

    for path in paths:
        if any(name.startswith("sketch_e") for name in pq.read_schema(path).names):
            return str(path)
    return None


def trajectory_table(paths) -> str | None:
    """The first of `paths` whose table holds training trajectories (a G-SNR table's)."""
    import pyarrow.parquet as pq

    from ..table import recorded_epochs

    for path in paths:
        if recorded_epochs(pq.read_schema(path).names):
            return str(path)
    return None


def _offered(table) -> list[str]:
    from ..table import available_utilities

    return available_utilities(table)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise GradfilterError(f"{path}: not found (a `bench noise` output directory has it)")
    return path.read_text(encoding="utf-8")


def _inputs(pool, scores: dict[str, np.ndarray], target: ScoreConfig, held_out: Path | None,
            held_out_share: float, seed: int, clean: np.ndarray, source: dict,
            groups: Groups) -> FinetuneInputs:
    from ..data.dataset import read_dataset
    from ..scoring.proxy import load_tokenizer
    from ..scoring.score import tokenize

    tokenizer = load_tokenizer(target.proxy)
    tokens = tokenize(pool, tokenizer, target, skip_bad_records=True)
    usable = np.array([r is None for r in tokens.reasons])
    if held_out is not None:
        references = read_dataset(held_out)
        other = tokenize(references, tokenizer, target, skip_bad_records=True)
        evaluation = [other.encoded[i] for i in other.scorable]
        held_groups = {g for g in groups.of(references.records) if g is not None}
        taken = np.zeros(0, dtype=np.int64)
        source["held_out"] = str(held_out)
    else:
        if not 0 < held_out_share < 1:
            raise GradfilterError(f"--held-out-share must be in (0, 1), got {held_out_share}")
        taken = split_by_group(np.flatnonzero(usable & clean), groups.ids, held_out_share, seed)
        usable[taken] = False
        evaluation = [tokens.encoded[i] for i in taken]
        held_groups = {groups.ids[i] for i in taken} - {None} if groups.ids else set()
        source["held_out"] = f"{len(taken)} clean records of the pool (seeded), not selectable"
    source["groups"] = _leave_out_groups(usable, groups, held_groups)
    digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode())
    for item in (*tokens.encoded, *evaluation):
        digest.update(item.input_ids.tobytes())
        digest.update(item.response_mask.tobytes())
    return FinetuneInputs(tokens.encoded, evaluation, scores, usable, source,
                          digest.hexdigest(), held_out_records=tuple(map(int, taken)))


def _leave_out_groups(usable: np.ndarray, groups: Groups, held: set[str]) -> str:
    """Make every pool record of a held-out conversation unselectable; how the split was
    made, in words."""
    if groups.ids is None:
        return f"split by record ({groups.note or 'no conversation ids'})"
    sharing = np.array([g is not None and g in held for g in groups.ids]) & usable
    usable[sharing] = False
    return (f"split by conversation (field {groups.field!r}, "
            f"{len(set(groups.ids) - {None})} conversations); {int(sharing.sum())} pool "
            "record(s) of held-out conversations left out of the pool")
