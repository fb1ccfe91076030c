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
readings, verdicts and report are in `finetune_measures` (no torch), one run's training in
`finetune_runs`, the pool, scores and held-out set in `finetune_inputs`; this module is the
recipe over them. The named selectors (`selectors`: coverage, s2l, balanced_random) give a
subset of the selectable records at each budget of the same size as a ranking's top,
fine-tuned and compared like any method's; `costs` says what each selection cost.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ScoreConfig
from ..diversity import DEFAULT_THRESHOLD, dedup
from ..errors import GradfilterError
from ..outputs import atomic_write_text, write_run_record
from ..progress import library_bars, progress_bars, shows_library_bars
from ..seeds import RESELECT_STREAM, derived_seed
from ..selection import select_top
from ..table import load_sketch_features
from .costs import Trained, cost_block, scoring_work
from .finetune_inputs import (
    FinetuneInputs,
    inputs_from_noise,
    inputs_from_pool,
    record_groups,
    split_by_group,
)
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
    results_markdown,
    stacked,
)
from .finetune_runs import RunSettings, run_key, run_seed, train_seed
from .selectors import selector_subsets

__all__ = ["DEDUP", "FULL_POOL", "RANDOM", "Curves", "FinetuneConfig", "FinetuneInputs",
           "RunSettings", "inputs_from_noise", "inputs_from_pool", "record_groups",
           "results_markdown", "run_finetune_benchmark", "split_by_group", "train_seed"]

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


# --- the benchmark ---------------------------------------------------------------------------

def run_finetune_benchmark(inputs: FinetuneInputs, out_dir: Path, target: ScoreConfig,
                           config: FinetuneConfig, budgets: Sequence[float], *,
                           progress: bool = True, log=print, dedup_methods: Sequence[str] = (),
                           dedup_threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Fine-tune on every method's subset, random's reselected subsets and the full pool, at
    every budget, for every seed; write runs/ (one file per run and seed, reused by a rerun),
    adapters/, results.json, results.md and report.html. Returns the results."""
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
    for selector in inputs.selectors:
        assert inputs.chooser is not None
        for key, kept in selector_subsets(selector, inputs.chooser, positions, budgets).items():
            chosen[f"{selector}@{key}"] = kept
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
        self.untrained: dict[int, list[float]] = {}  # eval batch size -> step-0 held-out losses

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
        run = train_seed(self.model, self.targets, [self.inputs.pool[i] for i in chosen],
                         self.inputs.held_out, settings, seed, device,
                         resolve_dtype(self.target.dtype, device),
                         self.out_dir / "adapters" / name.replace("@", "-"), self.target.proxy,
                         self.bars, self.untrained.get(settings.eval_batch_size))
        self.untrained.setdefault(settings.eval_batch_size, run["eval_loss"][0])
        return run


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
        "cost": _cost(rows, plan, config, inputs, target),
    }


def _cost(rows: dict[str, dict[str, list[Curves]]], plan: Plan, config: FinetuneConfig,
          inputs: FinetuneInputs, target: ScoreConfig) -> dict:
    """results.json's `cost` (`costs`): the G-SNR run's row-tokens over the records its table
    scored, each row's fine-tunes, the full pool at the same epochs."""
    from ..table import load_stats

    tokens = np.array([len(e.input_ids) for e in inputs.pool], dtype=np.int64)
    response = np.array([e.n_response_tokens for e in inputs.pool], dtype=np.int64)
    work = scoring_work(inputs.chooser.table if inputs.chooser else None)
    scored = np.ones(len(tokens), dtype=bool)
    if work is not None:
        reasons = load_stats(work.table, ["skip_reason"]).column(0)
        scored = np.asarray(reasons.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    trained = {}
    for budget, table in rows.items():
        settings = plan[budget][0]
        trained[budget] = {}
        for row, draws in table.items():
            runs = plan[budget][1][row]
            chosen = np.concatenate([positions for _, positions in runs])
            size = len(runs[0][1])
            trained[budget][row] = Trained(
                size, float(tokens[chosen].mean()) if len(chosen) else 0.0,
                settings.steps * settings.batch_size / max(size, 1),
                float(np.mean([c.seconds for c in draws])) / len(config.seeds))
    full = config.epochs * float(tokens[inputs.usable].sum())
    return cost_block(work, tokens[scored], response[scored], trained, full, target.proxy)


def _write_reports(out_dir: Path, results: dict, rows: dict[str, dict[str, list[Curves]]]) -> None:
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    write_run_record(out_dir / "results.json", {"stage": "bench finetune", **{
        k: results[k] for k in ("pool", "records", "budgets", "methods", "finetune", "target",
                                "threads", "run_seeds", "warnings")}})
    from ..report.benchmarks import write_benchmark_report  # the page: report.html

    write_benchmark_report(out_dir)
