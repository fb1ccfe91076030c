"""The noise benchmark of evaluation.md §1: corrupt a known part of the data, score the mixed
set with every method, and measure how much corruption each method keeps.

Corruptions (`corruptions.py`) act on every assistant turn that answers a prompt (the turns that
carry loss); they are registered by name, so users can add their own with `register_corruption`.
A set corrupted already (e.g. the first part of an earlier run's mixed set) is measured as it
is with its labels file (`read_labels`). The measures and verdicts are `noise_metrics.py`'s,
results.md is `noise_report.py`'s. The named selectors (`selectors.py`: coverage, s2l,
balanced_random) are measured beside the rankings on the same scored records: coverage and s2l
from the G-SNR run's table, balanced_random from a field of the data's records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import ScoreConfig, config_key
from ..data.conversations import Turn, answering_turns
from ..diversity import DEFAULT_THRESHOLD, dedup
from ..errors import GradfilterError
from ..outputs import atomic_path, atomic_write_text, write_run_record
from ..selection import select_top
from ..table import load_sketch_features, table_meta, utility_scores
from ..utilities import PERPLEXITY, RDS_SCORES, TARGET_UTILITIES, UTILITIES
from .corruptions import (  # noqa: F401  (register_corruption, CorruptionContext: plugin API)
    CORRUPTIONS,
    CorruptionContext,
    corrupt,
    corrupted_count,
    register_corruption,
)
from .costs import noise_cost, read_run_record, record_tokens, selection_cost, work_from
from .intervals import RESAMPLES, bootstrap
from .noise_metrics import (
    RANDOM_DRAWS,
    measure_names,
    method_metrics,
    random_expectation,
    random_over_draws,
    random_reselections,
    random_summary,
    selector_metrics,
    summary,
)
from .noise_report import results_markdown
from .selectors import (
    CLUSTERED,
    DEFAULT_BALANCE_FIELD,
    SelectorInputs,
    balance_labels,
    is_selector,
    selector_subsets,
)


def messages_jsonl(conversations: list[list[Turn]]) -> str:
    """Conversations as OpenAI `messages` JSONL, one per line, in order."""
    return "".join(json.dumps({"messages": [{"role": t.role, "content": t.text} for t in turns]},
                              ensure_ascii=False) + "\n" for turns in conversations)


def write_messages(path: Path, conversations: list[list[Turn]]) -> None:
    """The mixed set as OpenAI `messages` JSONL."""
    atomic_write_text(path, messages_jsonl(conversations))


def diversity_metrics(scores: np.ndarray, labels: Sequence[str | None],
                      budgets: Sequence[float], load, threshold: float) -> dict:
    """What dedup does to one method's selection at each budget: contamination (overall and
    per kind) of plain top-k and of dedup, the paired difference with its 95% bootstrap
    interval, and how many records dedup removed (with its largest groups).

    The interval resamples records with the two selections held fixed (a record drawn twice
    counts twice in both): re-running dedup on a resample would see the drawn copies as
    near-duplicates of each other."""
    labels_arr = np.array([label or "" for label in labels])
    corrupted = labels_arr != ""
    kinds = sorted(set(labels_arr) - {""})
    result: dict = {"plain": {}, "dedup": {}, "dedup_by_type": {}, "difference": {},
                    "removed": {}, "groups": {}}
    for budget in budgets:
        key = f"{budget:g}"
        plain = select_top(scores, ratio=budget)
        diverse, report = dedup(plain, load, threshold)
        in_plain = np.zeros(len(scores), bool)
        in_plain[plain.indices] = True
        in_dedup = np.zeros(len(scores), bool)
        in_dedup[diverse.indices] = True

        def difference(idx: np.ndarray, a=in_dedup, b=in_plain) -> float:
            return _share(corrupted[idx], a[idx]) - _share(corrupted[idx], b[idx])

        result["plain"][key] = _share(corrupted, in_plain)
        result["dedup"][key] = _share(corrupted, in_dedup)
        result["dedup_by_type"][key] = {k: _share(labels_arr == k, in_dedup) for k in kinds}
        result["difference"][key] = bootstrap(difference, [len(scores)]).as_dict()
        result["removed"][key] = report.removed
        result["groups"][key] = report.groups[:3]
    return result


def _share(flag: np.ndarray, chosen: np.ndarray) -> float:
    """Share of the chosen records that carry `flag` (NaN if none is chosen)."""
    return float(flag[chosen].mean()) if chosen.any() else float("nan")


def method_groups(methods: Sequence[str]) -> dict[str, list[str]]:
    """Which scoring run serves each method: one ensemble run serves every G-SNR utility (and
    `loss`, the ensemble's late loss, when it runs, and the selectors that cluster its
    trajectories); one IFD run serves perplexity too (in either direction) and RDS+ (scored
    with the target examples); balanced_random needs no run."""
    groups: dict[str, list[str]] = {}
    ensemble = any((m in UTILITIES and m != "loss") or m in CLUSTERED for m in methods)
    for method in methods:
        if method == "balanced_random":
            continue
        if (method in UTILITIES and (method != "loss" or ensemble)) or method in CLUSTERED:
            run = "gsnr"
        elif method in ("ifd", *PERPLEXITY, *RDS_SCORES):
            run = ("ifd" if "ifd" in methods or any(m in RDS_SCORES for m in methods)
                   else "perplexity")
        elif method in ("length", "random", "loss"):
            run = method
        else:
            raise GradfilterError(f"unknown method {method!r}")
        groups.setdefault(run, []).append(method)
    return groups


def scores_path(out_dir: Path, run: str, config: ScoreConfig, data_sha256: str,
                target_sha256: str | None = None) -> Path:
    """A name that changes whenever anything that affects the scores changes, so a rerun with
    the same arguments finds (and reuses) the finished table."""
    fields = {"run": run, "config": config_key(config), "data": data_sha256}
    if target_sha256 is not None:  # the G-SNR run scored with target examples
        fields["target"] = target_sha256
    key = json.dumps(fields, sort_keys=True)
    return out_dir / "scores" / f"{run}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.parquet"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def labels_table(source_index: np.ndarray, labels: Sequence[str | None]) -> pa.Table:
    return pa.table({"index": pa.array(np.arange(len(labels), dtype=np.int64)),
                     "source_index": pa.array(source_index.astype(np.int64)),
                     "corruption": pa.array(list(labels), type=pa.string())})


def write_labels(path: Path, source_index: np.ndarray, labels: Sequence[str | None]) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(labels_table(source_index, labels), tmp)


def recorded_path(path: Path, out_dir: Path) -> str:
    """How results.json records a table: relative to the run directory where it lies inside it
    (as the mixed set and labels are), so the directory can be moved or copied whole; else as
    given."""
    try:
        return str(path.resolve().relative_to(out_dir.resolve()))
    except ValueError:
        return str(path)


def run_table(run_dir: Path, recorded: str) -> Path:
    """The table results.json records: relative to the run directory, else as recorded (an
    absolute path, or one relative to where the run was made, as earlier versions wrote)."""
    inside = run_dir / recorded
    return inside if inside.exists() else Path(recorded)


def run_noise_benchmark(data, out_dir: Path, config: ScoreConfig, *, methods: Sequence[str],
                        corruptions: Sequence[str], fraction: float, budgets: Sequence[float],
                        corrupt_seeds: Sequence[int] = (0,),
                        tables: dict[str, Path] | None = None, resamples: int = RESAMPLES,
                        progress: bool = True, log=print, diversity: str = "none",
                        diversity_threshold: float = DEFAULT_THRESHOLD,
                        labels: Path | None = None, allow_data_mismatch: bool = False,
                        balance_field: str = DEFAULT_BALANCE_FIELD,
                        target_examples: Path | None = None) -> dict:
    """Corrupt (once per corruption seed), score with every method (reusing finished tables,
    or the `tables` given by run name), measure with intervals, report. With `labels` (a labels
    file as this benchmark writes), `data` is corrupted already: nothing is drawn, and the one
    seed names the run's files. With `diversity="dedup"`, also each method's selection with
    near-duplicates removed (by the G-SNR run's sketches) against its plain top-k. A table
    reused or given must have been scored on the mixed set (`binding`), unless
    `allow_data_mismatch`. Selectors among `methods` are measured on the same records
    (`balance_field`: balanced_random's field of the data's records; a corrupted record keeps
    its original's value). With `target_examples`, the G-SNR run is scored with them (the
    `align*` utilities), and the IFD run where `rds` or `rds-mean` is among the methods
    (RDS+)."""
    from ..data.dataset import as_dataset
    from ..scoring.proxy import load_tokenizer

    if tables and len(corrupt_seeds) != 1:
        raise GradfilterError("--table applies to one corruption seed (its mixed set)")
    needs_target = [m for m in methods if (m in TARGET_UTILITIES and "gsnr" not in (tables or {}))
                    or (m in RDS_SCORES and "ifd" not in (tables or {}))]
    if needs_target and target_examples is None:
        raise GradfilterError(f"--methods {','.join(needs_target)} need --target-examples")
    if labels is not None and len(corrupt_seeds) != 1:
        raise GradfilterError("--labels gives one corrupted set: give one --corrupt-seeds "
                              "value (it names the run's files), or none")
    if all(is_selector(m) for m in methods):
        raise GradfilterError("--methods: give a ranking (a utility, ifd, length, random) "
                              "beside the selectors; they are compared with it")
    dataset = as_dataset(data)
    given = None if labels is None else read_labels(Path(labels), dataset)
    conversations, source = _answered(dataset, log)
    chooser = _selector_inputs(methods, dataset, source, balance_field, config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    if given is not None:
        mixed_labels = [given.kinds[i] for i in source]
        corruptions = sorted({k for k in mixed_labels if k})
        fraction = sum(map(bool, mixed_labels)) / max(len(mixed_labels), 1)
        runs.append(_run_seed(out_dir, corrupt_seeds[0], conversations, mixed_labels,
                              given.source[source], config, methods, corruptions, budgets,
                              tables or {}, resamples, progress, log, diversity,
                              diversity_threshold, allow_data_mismatch, chooser,
                              target_examples))
    else:
        tokenizer = load_tokenizer(config.proxy)
        for seed in corrupt_seeds:
            mixed, drawn = corrupt(conversations, fraction, corruptions, seed, tokenizer)
            unchanged = corrupted_count(fraction, len(conversations)) - sum(map(bool, drawn))
            if unchanged:
                log(f"corruption seed {seed}: {unchanged} drawn record(s) came back unchanged "
                    "from their corruption and count as clean")
            runs.append(_run_seed(out_dir, seed, mixed, drawn, np.array(source), config,
                                  methods, corruptions, budgets, tables or {}, resamples,
                                  progress, log, diversity, diversity_threshold,
                                  allow_data_mismatch, chooser, target_examples))
    per_seed = {str(seed): run.results for seed, run in zip(corrupt_seeds, runs, strict=True)}
    keys = [f"{b:g}" for b in budgets]
    results = {
        "data": str(dataset.path), "corrupt_fraction": fraction,
        "corruptions": list(corruptions), "budgets": keys,
        "corrupt_seeds": list(corrupt_seeds), "resamples": resamples,
        **({"labels_file": str(labels)} if labels is not None else {}),
        "config": asdict(config), "seeds": per_seed,
        "random": random_over_draws([run.random[0] for run in runs],
                                    [run.random[1] for run in runs], measure_names(budgets)),
        "summary": summary(per_seed, keys),
    }
    _write_reports(out_dir, results)
    return results


def _selector_inputs(methods: Sequence[str], dataset, source: Sequence[int], field: str,
                     seed: int) -> SelectorInputs:
    """What the selectors among `methods` read besides a table: balanced_random's field of
    each answered record (checked here, before anything is scored or written)."""
    if "balanced_random" not in methods:
        return SelectorInputs(field=field, seed=seed)
    values = [None if dataset.records[i].error is not None
              else dataset.records[i].data.get(field) for i in source]
    balance_labels(SelectorInputs(values=values, field=field), np.arange(len(values)))
    return SelectorInputs(values=values, field=field, seed=seed)


@dataclass(frozen=True)
class GivenLabels:
    """A labels file read against the records of the set it labels."""

    kinds: list[str | None]  # per record of the data: the corruption, None where clean
    source: np.ndarray  # per record: its number in the set it was drawn from


def read_labels(path: Path, dataset) -> GivenLabels:
    """A labels file as `bench noise` writes it (`index`, `source_index`, `corruption`), one row
    per record of `dataset` in order; a one-line error naming the file, row and field where it
    does not match."""
    from ..data.sources import parquet_error

    if not path.is_file():
        raise GradfilterError(f"{path}: no such labels file (--labels)")
    try:
        table = pq.ParquetFile(path).read()
    except (pa.ArrowException, OSError) as exc:
        raise parquet_error(path, exc, "not a labels file (the Parquet file `bench noise` "
                                       "writes: index, source_index, corruption)") from exc
    for name, check in (("index", pa.types.is_integer), ("corruption", _is_text)):
        if name not in table.column_names:
            raise GradfilterError(f"{path}: no column {name!r} (a labels file has index, "
                                  "source_index, corruption)")
        if not check(table.schema.field(name).type):
            raise GradfilterError(f"{path}: column {name!r} holds "
                                  f"{table.schema.field(name).type}")
    records = len(dataset.records)
    if table.num_rows != records:
        raise GradfilterError(f"{path}: {table.num_rows} label rows, but DATA {dataset.path} "
                              f"has {records} records (one row per record, in order)")
    index = table["index"].to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(index != np.arange(records))
    if len(wrong):
        raise GradfilterError(f"{path}: row {wrong[0]} has index {index[wrong[0]]}, expected "
                              f"{wrong[0]} (one row per record of DATA, in order)")
    kinds = [kind or None for kind in table["corruption"].to_pylist()]
    source = (table["source_index"].to_numpy(zero_copy_only=False).astype(np.int64)
              if "source_index" in table.column_names else np.arange(records))
    return GivenLabels(kinds, source)


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)


@dataclass(frozen=True)
class SeedRun:
    """One corruption draw: its results, the scores and labels of its scored records, and
    random on them (its expectation and its reselections, [draws, measures])."""

    results: dict
    scores: dict[str, np.ndarray]
    labels: list[str | None]
    random: tuple[np.ndarray, np.ndarray]


def _answered(dataset, log) -> tuple[list[list[Turn]], list[int]]:
    """The conversations that have a response to a prompt, and their record numbers."""
    conversations, source = [], []
    for record in dataset.records:
        try:
            turns = dataset.turns(record)
        except GradfilterError as exc:
            log(f"skipping record {record.index}: {exc}")
            continue
        if answering_turns(turns):
            conversations.append(turns)
            source.append(record.index)
    log(f"{len(conversations)} of {len(dataset.records)} records have a response to a prompt")
    return conversations, source


def _run_seed(out_dir: Path, seed: int, mixed: list[list[Turn]], labels: list[str | None],
              source: np.ndarray, config: ScoreConfig, methods: Sequence[str],
              corruptions: Sequence[str], budgets: Sequence[float], given: dict[str, Path],
              resamples: int, progress: bool, log, diversity: str = "none",
              diversity_threshold: float = DEFAULT_THRESHOLD,
              allow_data_mismatch: bool = False,
              chooser: SelectorInputs | None = None,
              target_examples: Path | None = None) -> SeedRun:
    """One corruption draw: its mixed set and labels, every method's scores and every
    selector's subsets, the metrics."""
    from ..binding import require_table_of
    from ..data.dataset import read_dataset
    from ..scoring.score import score
    from ..table import load_stats

    mixed_path, labels_path = out_dir / f"mixed-s{seed}.jsonl", out_dir / f"labels-s{seed}.parquet"
    write_messages(mixed_path, mixed)
    write_labels(labels_path, source, labels)
    digest = file_sha256(mixed_path)
    all_scores: dict[str, np.ndarray] = {}
    tables: dict[str, str] = {}
    run_tables: dict[str, tuple[Path, pa.Table]] = {}  # each run's table, for the cost
    ensemble: str | None = None  # the G-SNR run's table, for the selectors that cluster
    scored = np.ones(len(mixed), dtype=bool)
    for run, members in method_groups(methods).items():
        targeted = run == "gsnr" or any(m in RDS_SCORES for m in members)
        target = target_examples if targeted else None
        path = Path(given[run]) if run in given else scores_path(
            out_dir, run, config, digest, None if target is None else file_sha256(Path(target)))
        if path.is_file():
            log(f"{run}: reusing {path}")
            table = load_stats(path)
            if table.num_rows != len(mixed):
                raise GradfilterError(f"{path}: {table.num_rows} rows, but the mixed set "
                                      f"{mixed_path} has {len(mixed)} records")
            require_table_of(table, path, read_dataset(mixed_path).records, mixed_path,
                             allow_data_mismatch, log)
        else:
            log(f"{run}: scoring {len(mixed)} records (corruption seed {seed})")
            table = score(mixed_path, path, config, method=run, progress=progress,
                          target_examples=target)
        scored &= table["skip_reason"].is_null().to_numpy(zero_copy_only=False)
        ensemble = str(path) if run == "gsnr" else ensemble
        run_tables[run] = (path, table)
        for method in members:
            if not is_selector(method):
                all_scores[method] = utility_scores(table, method)
                tables[method] = str(path)
    # Records no method could score (e.g. a prompt longer than max_length) are left out of
    # every metric alike.
    all_scores = {m: s[scored] for m, s in all_scores.items()}
    kept = [label for label, keep in zip(labels, scored, strict=True) if keep]
    corrupted = [label for label in kept if label]
    results = {
        "mixed": mixed_path.name, "labels": labels_path.name,
        "tables": {method: recorded_path(Path(path), out_dir) for method, path in tables.items()},
        "records": len(kept), "unscorable": int((~scored).sum()),
        "corrupted": len(corrupted),
        "corrupted_by_type": {k: corrupted.count(k) for k in corruptions},
        "methods": method_metrics(all_scores, kept, budgets, resamples, seed),
    }
    selectors = [m for m in methods if is_selector(m)]
    chosen: dict[str, dict[str, np.ndarray]] = {}
    if selectors:
        chooser = replace(chooser or SelectorInputs(), table=ensemble)
        rows = np.flatnonzero(scored)
        chosen = {m: selector_subsets(m, chooser, rows, budgets) for m in selectors}
        results["methods"].update(selector_metrics(chosen, kept, budgets, all_scores,
                                                   resamples, seed))
        results["selectors"] = {m: {"table": recorded_path(Path(ensemble), out_dir)}
                                if m in CLUSTERED else {"field": chooser.field}
                                for m in selectors}
    results["cost"] = _seed_cost(out_dir, run_tables, method_groups(methods), scored,
                                 {**{m: {f"{b:g}": select_top(s, ratio=b).indices
                                         for b in budgets} for m, s in all_scores.items()},
                                  **chosen})
    bad = np.array([bool(label) for label in kept])
    random = (random_expectation(bad, budgets),
              random_reselections(bad, budgets, RANDOM_DRAWS, seed))
    results["random"] = random_summary(*random, measure_names(budgets))
    if diversity == "dedup":
        results["diversity"] = _diversity(all_scores, kept, budgets, tables, methods,
                                          np.flatnonzero(scored), diversity_threshold)
    return SeedRun(results, all_scores, kept, random)


def _seed_cost(out_dir: Path, run_tables: dict[str, tuple[Path, pa.Table]],
               groups: dict[str, list[str]], scored: np.ndarray,
               kept: dict[str, dict[str, np.ndarray]]) -> dict:
    """results.json's `cost` of one draw (`costs.noise_cost`): each run's row-tokens over the
    records it scored, and each method's subsets (`kept`: positions among the `scored`
    records) against the full pool, counted with the tables' `n_tokens` where they have it."""
    runs: dict[str, dict | None] = {}
    counted: tuple[np.ndarray, bool] | None = None
    for run, (path, table) in run_tables.items():
        tokens, response, done, whole = record_tokens(table)
        work = work_from(table_meta(table), read_run_record(path), recorded_path(path, out_dir))
        runs[run] = None if work is None else selection_cost(work, tokens[done], response[done])
        if counted is None or (whole and not counted[1]):
            counted = (tokens, whole)
    tokens, whole = counted if counted is not None else (np.zeros(len(scored), np.int64), False)
    served = {method: run for run, members in groups.items() for method in members}
    return noise_cost(runs, served, kept, tokens[scored], whole)


def _diversity(all_scores: dict[str, np.ndarray], labels: list[str | None],
               budgets: Sequence[float], tables: dict[str, str], methods: Sequence[str],
               rows: np.ndarray, threshold: float) -> dict:
    """dedup against plain top-k for every method, by the sketches of the first G-SNR run."""
    sketched = next((tables[m] for m in methods if m in UTILITIES), None)
    if sketched is None:
        raise GradfilterError("--diversity dedup needs a G-SNR utility among --methods "
                              "(its table holds the sketches)")

    def load(records: np.ndarray) -> np.ndarray:
        return load_sketch_features(sketched, rows[records])

    return {"method": "dedup", "threshold": threshold, "sketches": sketched,
            "methods": {m: diversity_metrics(s, labels, budgets, load, threshold)
                        for m, s in all_scores.items()}}


def _write_reports(out_dir: Path, results: dict) -> None:
    """results.json and .md, the run record and the page (report.html: its plots too)."""
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    write_run_record(out_dir / "results.json", {"stage": "bench noise", **{
        k: results[k] for k in ("data", "config", "corrupt_seeds", "corrupt_fraction",
                                "corruptions", "budgets", "resamples", "labels_file")
        if k in results},
        "tables": {seed: run["tables"] for seed, run in results["seeds"].items()}})
    from ..report.benchmarks import write_benchmark_report  # the page: report.html

    write_benchmark_report(out_dir)
