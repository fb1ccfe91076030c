"""The fine-tune benchmark of evaluation.md §2: does training on a method's subset give a better
model, sooner, than random's, under the same compute?

At each budget, a target model (by default the proxy) is fine-tuned with LoRA (or fully) on each
method's subset of the pool, on several random subsets (random's row is their mean), and on the
full pool as the reference, all for the same optimiser steps and batch: by default `--epochs`
passes over the budget's subset (the subset is cycled). Training loss is logged per step, the
held-out loss (response tokens only, per-example token mean, the scoring stage's template and
masks) at step 0 (the untrained model), every `eval_every` steps and at the end. Each run's LoRA
initialisation and data order follow the value of its seed only, so seed s of every subset
starts from the same adapter and runs are paired by seed as well as by held-out example. The
readings, verdicts and report are in `finetune_measures` (no torch).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import ScoreConfig, config_key
from ..diversity import DEFAULT_THRESHOLD, dedup
from ..errors import GradfilterError
from ..outputs import atomic_write_text, write_run_record
from ..progress import advance_bar, library_bars, progress_bars, shows_library_bars
from ..scoring.batching import Batcher, collection_batches, member_batches
from ..scoring.ensemble import LoRAEnsemble, linear_warmup_decay, per_example_losses
from ..scoring.tokenization import Encoded
from ..scoring.trainer import WARMUP_RATIO
from ..seeds import FINETUNE_STREAM, HELD_OUT_STREAM, RESELECT_STREAM, derived_seed
from ..selection import select_top
from ..table import load_sketch_features
from .finetune_measures import (
    DECLARED,
    DEDUP,
    DEFAULT_EPOCHS,
    FULL_POOL,
    MIN_RANDOM_DRAWS,
    RANDOM,
    READINGS,
    UNTRAINED,
    Curves,
    budget_results,
    plot_curves,
    results_markdown,
    stacked,
)

__all__ = ["DEDUP", "FULL_POOL", "RANDOM", "Curves", "FinetuneConfig", "FinetuneInputs",
           "inputs_from_noise", "inputs_from_pool", "results_markdown", "run_finetune_benchmark",
           "split_by_group"]

@dataclass(frozen=True)
class FinetuneConfig:
    """How every target is trained and measured (the same for every subset at one budget)."""

    epochs: float = DEFAULT_EPOCHS  # passes over the budget's subset; sets the steps
    steps: int | None = None  # an explicit override: these steps at every budget
    batch_size: int = 8
    lr: float = 2e-4
    lora_rank: int = 8
    lora_alpha: float = 16.0
    grad_clip: float = 1.0
    eval_every: int | None = None  # None: a tenth of the budget's steps
    eval_batch_size: int = 16
    full_finetune: bool = False
    seeds: tuple[int, ...] = (0, 1, 2)
    base_seed: int = 0
    random_draws: int = MIN_RANDOM_DRAWS

    def validate(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise GradfilterError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.epochs > 0:
            raise GradfilterError(f"--epochs must be positive, got {self.epochs}")
        if not self.seeds:
            raise GradfilterError("--seeds needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise GradfilterError(f"--seeds lists a seed twice: {list(self.seeds)}")
        if self.random_draws < MIN_RANDOM_DRAWS:
            raise GradfilterError(f"--random-draws must be at least {MIN_RANDOM_DRAWS} (random "
                                  "is the mean of several reselected subsets), got "
                                  f"{self.random_draws}")

    def settings(self, subset_records: int) -> RunSettings:
        """One budget's run settings: `epochs` passes over its subset of `subset_records`
        records (rounded up to whole steps), unless `steps` overrides it."""
        steps = self.steps or max(1, math.ceil(self.epochs * subset_records / self.batch_size))
        return RunSettings(steps, self.eval_every or max(1, steps // 10), self.batch_size,
                           self.lr, self.lora_rank, self.lora_alpha, self.grad_clip,
                           self.eval_batch_size, self.full_finetune, self.base_seed)


@dataclass(frozen=True)
class RunSettings:
    """Everything one run trains and evaluates with, but its data and its seed."""

    steps: int
    eval_every: int
    batch_size: int
    lr: float
    lora_rank: int
    lora_alpha: float
    grad_clip: float
    eval_batch_size: int
    full_finetune: bool
    base_seed: int


def run_seed(settings: RunSettings, seed: int) -> int:
    """The seed of a run for the --seeds entry `seed`: its value's, wherever it is listed."""
    return derived_seed(settings.base_seed, seed, FINETUNE_STREAM)


def budget_size(budget: float, selectable: int) -> int:
    """Records a subset keeps at `budget` (as `select_top --ratio`)."""
    return math.floor(budget * selectable + 0.5)


def subsets(scores: dict[str, np.ndarray], budgets: Sequence[float],
            dedup_methods: Sequence[str] = (), diverse=None) -> dict[str, np.ndarray]:
    """`method@budget` -> the positions (in `scores`' arrays) that method keeps at that budget
    (input order); for each of `dedup_methods`, `method+dedup@budget` too: the same ranking
    with near-duplicates removed by `diverse(selection)`."""
    chosen = {}
    for method, values in scores.items():
        for b in budgets:
            plain = select_top(values, ratio=b)
            chosen[f"{method}@{b:g}"] = np.sort(plain.indices)
            if method in dedup_methods:
                chosen[f"{method}{DEDUP}@{b:g}"] = np.sort(diverse(plain).indices)
    return chosen


def random_subsets(selectable: int, budget: float, draws: int, seed: int) -> list[np.ndarray]:
    """Random's reselected subsets at `budget`: draw r is a uniform choice of the budget's size
    from a permutation seeded by (seed, r) (so a smaller budget's draw r is inside a larger
    one's)."""
    size = budget_size(budget, selectable)
    return [np.sort(np.random.default_rng(derived_seed(seed, r, RESELECT_STREAM))
                    .permutation(selectable)[:size]) for r in range(draws)]


def train_seed(model: torch.nn.Module, targets: tuple[str, ...], subset: list[Encoded],
               held_out: list[Encoded], settings: RunSettings, seed: int,
               device: torch.device, dtype: torch.dtype, adapters: Path | None,
               base_name: str, bars=None) -> dict:
    """Fine-tune one target on `subset` (cycled) for `settings.steps` steps from the seed
    `seed`'s adapter and data order; the held-out losses at step 0, every `eval_every` steps
    and at the end."""
    start = time.perf_counter()
    runner = _Runner(model, targets, subset, settings, run_seed(settings, seed), device, dtype)
    task = None if bars is None else bars.add_task(
        f"fine-tune seed {seed} on {len(subset)} records", total=settings.steps, rate="",
        unit="steps")
    losses, evals, points = [], [], []
    for step in range(settings.steps + 1):
        if step % settings.eval_every == 0 or step == settings.steps:
            evals.append(runner.held_out_loss(held_out))
            points.append(step)
        if step < settings.steps:
            losses.append(runner.step(step))
            if task is not None:
                advance_bar(bars, task, 1, start)
    if adapters is not None:
        runner.save(adapters / f"seed{seed}", base_name)
    return {"seed": seed, "run_seed": run_seed(settings, seed), "train_loss": losses,
            "eval_steps": points, "eval_loss": evals, "seconds": time.perf_counter() - start}


class _Runner:
    """One run's target: a LoRA adapter initialised from the run's seed on a copy of the model,
    or the whole copy with `full_finetune`."""

    def __init__(self, model: torch.nn.Module, targets: tuple[str, ...], subset: list[Encoded],
                 settings: RunSettings, seed: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.settings, self.seed, self.device = settings, seed, device
        self.model = copy.deepcopy(model)
        if settings.full_finetune:
            self.ensemble = None
            self.model.requires_grad_(True)
            params = list(self.model.parameters())
        else:
            self.ensemble = LoRAEnsemble(self.model, 1, settings.lora_rank, settings.lora_alpha,
                                         targets, seed)
            params = self.ensemble.parameters()
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_warmup_decay(settings.steps, WARMUP_RATIO))
        self.autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        self.subset = subset
        self.batcher = Batcher(subset, device)
        self.lengths = np.array([len(e.input_ids) for e in subset], dtype=np.int64)
        self.order: list[np.ndarray] = []

    def _batch_rows(self, step: int) -> np.ndarray:
        """Step k's examples: the run's epoch-seeded batches of the subset, epoch after epoch,
        as the scoring stage trains a member (the subset is cycled)."""
        while len(self.order) <= step:
            epoch = len(self.order) // -(-len(self.subset) // self.settings.batch_size) + 1
            self.order.extend(member_batches(self.lengths, self.settings.batch_size, 1,
                                             self.seed, epoch, bucketing=False)[0])
        return self.order[step]

    def step(self, step: int) -> float:
        batch = self.batcher.batch([self._batch_rows(step)])
        with self.autocast:
            losses = per_example_losses(self.model, batch.input_ids, batch.attention_mask,
                                        batch.response_mask, batch.targets)
        losses.mean().backward()
        if self.ensemble is not None:
            self.ensemble.clip_per_member(self.settings.grad_clip)
        else:
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(losses.detach().mean())

    @torch.no_grad()
    def held_out_loss(self, held_out: list[Encoded]) -> list[float]:
        """Each held-out example's mean response loss under the current target."""
        lengths = np.array([len(e.input_ids) for e in held_out], dtype=np.int64)
        batcher = Batcher(held_out, self.device)
        values = np.empty(len(held_out))
        for rows in collection_batches(lengths, self.settings.eval_batch_size, bucketing=True):
            batch = batcher.batch([rows])
            with self.autocast:
                values[rows] = per_example_losses(
                    self.model, batch.input_ids, batch.attention_mask, batch.response_mask,
                    batch.targets).double().cpu().numpy()
        return values.tolist()

    def save(self, directory: Path, base_name: str) -> None:
        if self.ensemble is not None:
            self.ensemble.save_member(0, directory, base_name)
        else:
            self.model.save_pretrained(directory)


def run_key(name: str, positions: np.ndarray, settings: RunSettings, seed: int,
            target: ScoreConfig, data_digest: str) -> str:
    """A name that changes whenever anything that affects the run changes (its seed's value,
    not the other seeds beside it)."""
    key = json.dumps({"name": name, "subset": hashlib.sha256(positions.tobytes()).hexdigest(),
                      "settings": asdict(settings), "seed": seed, "target": config_key(target),
                      "data": data_digest}, sort_keys=True, default=str)
    return f"{name}-s{seed}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


# --- the benchmark ---------------------------------------------------------------------------

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


def run_finetune_benchmark(inputs: FinetuneInputs, out_dir: Path, target: ScoreConfig,
                           config: FinetuneConfig, budgets: Sequence[float], *,
                           progress: bool = True, log=print, dedup_methods: Sequence[str] = (),
                           dedup_threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Fine-tune on every method's subset, random's reselected subsets and the full pool, at
    every budget, for every seed; write runs/ (one file per run and seed, reused by a rerun),
    adapters/, results.json, results.md and heldout.png. Returns the results."""
    config.validate()
    if not inputs.held_out:
        raise GradfilterError("the held-out set has no scorable record")
    plan = _plan(inputs, config, budgets, dedup_methods, dedup_threshold, log)
    warnings = _override_warnings(config, plan, log)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    trainer = _Trainer(inputs, target, out_dir, config.seeds, log)
    rows: dict[str, dict[str, list[Curves]]] = {}
    with progress_bars(progress) as bars, library_bars(shows_library_bars(progress)):
        trainer.bars = bars
        for budget, (settings, table) in plan.items():
            rows[budget] = {row: [trainer.curves(name, chosen, settings) for name, chosen in runs]
                            for row, runs in table.items()}
    results = summarize(rows, plan, config, inputs, target, warnings)
    for budget in results["budgets"]:
        for warning in results["schedule"][budget]["warnings"]:
            log(f"warning (budget {budget}): {warning}")
    _write_reports(out_dir, results, rows)
    return results


Plan = dict[str, tuple[RunSettings, dict[str, list[tuple[str, np.ndarray]]]]]


def _plan(inputs: FinetuneInputs, config: FinetuneConfig, budgets: Sequence[float],
          dedup_methods: Sequence[str], dedup_threshold: float, log) -> Plan:
    """budget -> its run settings, and row -> its runs (name, pool records): one per method
    (and dedup variant), random's draws, the full pool."""
    positions = np.flatnonzero(inputs.usable)
    scores = {m: s[positions] for m, s in inputs.scores.items() if m != RANDOM}
    if RANDOM in inputs.scores:
        log(f"random: the mean of {config.random_draws} reselected random subsets (the random "
            "table's one draw is not used)")
    diverse = _dedup_by_sketches(inputs, positions, dedup_methods, dedup_threshold)
    chosen = subsets(scores, budgets, dedup_methods, diverse)
    plan: Plan = {}
    for b in budgets:
        key = f"{b:g}"
        if budget_size(b, len(positions)) < 1:
            raise GradfilterError(f"--budgets {key}: keeps no record of the {len(positions)} "
                                  "selectable ones")
        table = {name.split("@")[0]: [(name, positions[kept])]
                 for name, kept in chosen.items() if name.endswith(f"@{key}")}
        draws = random_subsets(len(positions), b, config.random_draws, config.base_seed)
        table[RANDOM] = [(f"{RANDOM}-draw{r}@{key}", positions[kept])
                         for r, kept in enumerate(draws)]
        table[FULL_POOL] = [(f"{FULL_POOL}@{key}", positions)]
        plan[key] = (config.settings(budget_size(b, len(positions))), dict(sorted(
            table.items(), key=lambda item: (item[0] in (RANDOM, FULL_POOL),
                                             item[0] == FULL_POOL, item[0]))))
    return plan


def _override_warnings(config: FinetuneConfig, plan: Plan, log) -> list[str]:
    """With an explicit --steps, how many times each record is seen at each budget."""
    if config.steps is None:
        return []
    seen = []
    for budget, (settings, table) in plan.items():
        passes = settings.steps * settings.batch_size / max(len(table[RANDOM][0][1]), 1)
        seen.append(f"{float(budget):.0%}: {passes:.2g} passes over the subset")
    warning = (f"--steps {config.steps} overrides the epoch budget ({'; '.join(seen)}): "
               "beyond a few passes a small subset overfits, and the verdict then measures how "
               "fast it does (docs/method.md)")
    log(f"warning: {warning}")
    return [warning]


class _Trainer:
    """Trains (or reuses) one run per seed, loading the target once, when first needed."""

    def __init__(self, inputs: FinetuneInputs, target: ScoreConfig, out_dir: Path,
                 seeds: Sequence[int], log) -> None:
        self.inputs, self.target, self.out_dir, self.seeds, self.log = (inputs, target, out_dir,
                                                                       seeds, log)
        self.model, self.targets, self.bars = None, target.lora_targets, None

    def curves(self, name: str, chosen: np.ndarray, settings: RunSettings) -> Curves:
        runs, reused = [], 0
        for seed in self.seeds:
            path = self.out_dir / "runs" / (
                run_key(name, chosen, settings, seed, self.target, self.inputs.digest) + ".json")
            if path.is_file():
                runs.append(json.loads(path.read_text()))
                reused += 1
                continue
            self.log(f"{name}: fine-tuning seed {seed} on {len(chosen)} records, "
                     f"{settings.steps} steps")
            runs.append(self._train(name, chosen, settings, seed))
            atomic_write_text(path, json.dumps(runs[-1]) + "\n")
        if reused:
            self.log(f"{name}: reusing {reused} finished seed run(s) under {self.out_dir / 'runs'}")
        return Curves(np.array([r["train_loss"] for r in runs]), list(runs[0]["eval_steps"]),
                      np.transpose(np.array([r["eval_loss"] for r in runs]), (1, 0, 2)),
                      sum(r["seconds"] for r in runs))

    def _train(self, name: str, chosen: np.ndarray, settings: RunSettings, seed: int) -> dict:
        from ..scoring.proxy import default_targets, load_model, resolve_device, resolve_dtype

        device = resolve_device(self.target.device)
        if self.model is None:
            torch.manual_seed(self.target.seed)
            self.model = load_model(self.target.proxy, device)
            self.targets = self.target.with_targets(default_targets(self.model)).targets
        assert self.targets is not None
        return train_seed(self.model, self.targets, [self.inputs.pool[i] for i in chosen],
                          self.inputs.held_out, settings, seed, device,
                          resolve_dtype(self.target.dtype, device),
                          self.out_dir / "adapters" / name.replace("@", "-"), self.target.proxy,
                          self.bars)


def _dedup_by_sketches(inputs: FinetuneInputs, positions: np.ndarray,
                       methods: Sequence[str], threshold: float):
    """selection -> the selection with near-duplicates removed, the selection's indices being
    into `positions` (None when no method asks for it)."""
    if not methods:
        return None
    unknown = [m for m in methods if m not in inputs.scores or m == RANDOM]
    if unknown:
        raise GradfilterError(f"--dedup {unknown}: not among the methods compared "
                              f"{[m for m in inputs.scores if m != RANDOM]}")
    if inputs.sketches is None:
        raise GradfilterError("--dedup needs a G-SNR table with gradient sketches among the "
                              "methods' tables")
    sketches = inputs.sketches

    def load(records: np.ndarray) -> np.ndarray:
        return load_sketch_features(sketches, positions[records])

    return lambda selection: dedup(selection, load, threshold)[0]


def summarize(rows: dict[str, dict[str, list[Curves]]], plan: Plan, config: FinetuneConfig,
              inputs: FinetuneInputs, target: ScoreConfig, warnings: list[str]) -> dict:
    """results.json: the tables (every budget's rows, the untrained model first), schedules,
    mean curves, subsets and how the runs were seeded."""
    per_budget, schedules, mean_curves = {}, {}, {}
    for budget, table in rows.items():
        settings = plan[budget][0]
        records = {row: len(runs[0][1]) for row, runs in plan[budget][1].items()}
        per_budget[budget], schedules[budget] = budget_results(table, records, settings.steps,
                                                               settings.batch_size)
        means = {row: stacked(draws).mean(axis=(1, 2, 3)).tolist()
                 for row, draws in table.items()}
        first = next(iter(means.values()))
        mean_curves[budget] = {UNTRAINED: [first[0]] * len(first), **means}
    all_warnings = [*warnings, *(w for s in schedules.values() for w in s["warnings"])]
    return {
        "pool": inputs.source, "records": {"pool": len(inputs.pool),
                                           "usable": int(inputs.usable.sum()),
                                           "held_out": len(inputs.held_out)},
        "held_out_records": list(inputs.held_out_records),  # pool records (none: a file)
        "budgets": list(rows), "methods": sorted({row for table in rows.values()
                                                  for row in table if row != FULL_POOL}),
        "finetune": asdict(config), "target": asdict(target),
        "threads": torch.get_num_threads(),
        "reading": {"declared": DECLARED, **READINGS},
        "run_seeds": {str(seed): run_seed(plan[next(iter(plan))][0], seed)
                      for seed in config.seeds},
        "schedule": schedules, "results": per_budget, "mean_curves": mean_curves,
        "warnings": all_warnings,
        "subsets": {name: chosen.tolist() for _, table in plan.values()
                    for runs in table.values() for name, chosen in runs},  # pool records
        "curves": {name: {"eval_steps": c.eval_steps,
                          "eval_loss_mean": c.eval_loss.mean(axis=(1, 2)).tolist(),
                          "train_loss_mean": c.train_loss.mean(axis=0).tolist(),
                          "seconds": c.seconds}
                   for budget, table in rows.items() for row, draws in table.items()
                   for (name, _), c in zip(plan[budget][1][row], draws, strict=True)},
    }


def _write_reports(out_dir: Path, results: dict, rows: dict[str, dict[str, list[Curves]]]) -> None:
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    plot_curves(out_dir / "heldout.png", rows)
    write_run_record(out_dir / "results.json", {"stage": "bench finetune", **{
        k: results[k] for k in ("pool", "records", "budgets", "methods", "finetune", "target",
                                "threads", "run_seeds", "warnings")}})
    from ..report.benchmarks import write_benchmark_report  # the page: report.html

    write_benchmark_report(out_dir)


# --- where the inputs come from --------------------------------------------------------------

def inputs_from_noise(noise_dir: Path, methods: Sequence[str] | None, target: ScoreConfig,
                      held_out: Path | None, held_out_share: float, seed: int,
                      corrupt_seed: int | None = None, group_field: str | None = None,
                      allow_data_mismatch: bool = False, log=print) -> FinetuneInputs:
    """The noise benchmark's mixed set as the pool and its tables as the methods' scores
    (selection on noisy data); held out: `held_out` (a file of prompts with reference answers)
    or a seeded share of the clean records, taken out of the pool (evaluation on clean
    references), by conversation where the benchmark's data carries conversation ids. Each
    table must have been scored on the mixed set (`binding`), unless `allow_data_mismatch`."""
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
    chosen = list(methods) if methods else list(draw["tables"])
    missing = [m for m in chosen if m not in draw["tables"]]
    if missing:
        raise GradfilterError(f"{noise_dir}: the noise benchmark has no table for {missing}; "
                              f"it has {list(draw['tables'])}")
    tables = {m: run_table(noise_dir, path) for m, path in draw["tables"].items()}
    loaded = {path: load_stats(path) for path in {tables[m] for m in chosen}}
    for path, table in loaded.items():
        require_table_of(table, path, pool.records, pool.path, allow_data_mismatch, log)
    scores = {m: utility_scores(loaded[tables[m]], m) for m in chosen}
    source = {"data": str(noise_dir / draw["mixed"]), "noise_benchmark": str(noise_dir),
              "corrupted": int((~clean).sum())}
    groups = _noise_groups(noise["data"], labels.column("source_index").to_numpy(),
                           group_field, log)
    inputs = _inputs(pool, scores, target, held_out, held_out_share, seed, clean, source, groups)
    return replace(inputs, sketches=_sketched_table(tables.values()))


def inputs_from_pool(pool_path: str, tables: dict[str, str], target: ScoreConfig,
                     held_out: Path | None, held_out_share: float, seed: int,
                     group_field: str | None = None, allow_data_mismatch: bool = False,
                     log=print) -> FinetuneInputs:
    """A pool file and the statistics tables of the methods to compare (scored on that pool,
    checked by `binding` unless `allow_data_mismatch`)."""
    from ..binding import require_table_of
    from ..data.dataset import read_dataset
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
    return replace(inputs, sketches=_sketched_table(tables.values()))


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
    (`<conversation>#<turn>`, as benchmarks/sharegpt_pairs.py writes), or `id` where ids tie
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
