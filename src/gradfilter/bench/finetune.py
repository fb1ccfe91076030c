"""The fine-tune benchmark of evaluation.md §2: does training on a method's subset give a better
model, sooner, than random's, under the same compute?

For each method, budget and seed, a target model (by default the proxy) is fine-tuned with LoRA
(or fully) on that method's subset of the pool for the same number of optimiser steps and the
same batch (the subset is cycled), and on the full pool as the reference. Training loss is logged
per step, the held-out loss (response tokens only, per-example token mean, the scoring stage's
template and masks) every `eval_every` steps. Seed s of every method starts from the same
initial adapter (LoRA init seeded by (seed, s) only) and differs only by the data, so runs are
paired by seed as well as by held-out example.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
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
from ..selection import select_top
from ..table import load_sketch_features
from .intervals import Interval, bootstrap

FULL_POOL = "full"  # the reference run: the whole pool, same steps
DEDUP = "+dedup"  # a method's subset with near-duplicates removed (select --diversity dedup)


@dataclass(frozen=True)
class FinetuneConfig:
    """How every target is trained and measured (the same for every method)."""

    steps: int
    batch_size: int = 8
    lr: float = 2e-4
    lora_rank: int = 8
    lora_alpha: float = 16.0
    grad_clip: float = 1.0
    eval_every: int = 5
    eval_batch_size: int = 16
    full_finetune: bool = False
    seeds: tuple[int, ...] = (0, 1, 2)
    base_seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise GradfilterError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.seeds:
            raise GradfilterError("--seeds needs at least one seed")


@dataclass
class Curves:
    """One (method, budget) run over every seed."""

    train_loss: np.ndarray  # [seeds, steps]
    eval_steps: list[int]
    eval_loss: np.ndarray  # [points, seeds, held-out examples]
    seconds: float

    def as_dict(self) -> dict:
        return {"train_loss": self.train_loss.tolist(), "eval_steps": self.eval_steps,
                "eval_loss": self.eval_loss.tolist(), "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict) -> Curves:
        return cls(np.array(data["train_loss"]), list(data["eval_steps"]),
                   np.array(data["eval_loss"]), float(data["seconds"]))


def default_steps(inputs: FinetuneInputs, budgets: Sequence[float], batch_size: int) -> int:
    """Two passes over the largest subset (at least 10 steps)."""
    largest = math.floor(max(budgets) * int(inputs.usable.sum()) + 0.5)
    return max(10, math.ceil(2 * largest / batch_size))


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


def train_subset(model: torch.nn.Module, targets: tuple[str, ...], subset: list[Encoded],
                 held_out: list[Encoded], config: FinetuneConfig, device: torch.device,
                 dtype: torch.dtype, adapters: Path | None, base_name: str,
                 bars=None) -> Curves:
    """Fine-tune one target per seed on `subset` (cycled) for `config.steps` steps; the
    held-out losses every `eval_every` steps and at the end."""
    start = time.perf_counter()
    train, evals, points = [], [], []
    for k, seed in enumerate(config.seeds):
        runner = _Runner(model, targets, subset, config, k, device, dtype)
        task = None if bars is None else bars.add_task(
            f"fine-tune seed {seed} on {len(subset)} records", total=config.steps, rate="",
            unit="steps")
        started = time.perf_counter()
        losses, seed_evals, points = [], [], []
        for step in range(config.steps + 1):
            if step % config.eval_every == 0 or step == config.steps:
                seed_evals.append(runner.held_out_loss(held_out))
                points.append(step)
            if step < config.steps:
                losses.append(runner.step(step))
                if task is not None:
                    advance_bar(bars, task, 1, started)
        train.append(losses)
        evals.append(seed_evals)
        if adapters is not None:
            runner.save(adapters / f"seed{seed}", base_name)
    return Curves(np.array(train), points, np.transpose(np.array(evals), (1, 0, 2)),
                  time.perf_counter() - start)


class _Runner:
    """One seed's target: a LoRA member (initialised from (base_seed, k)) on a copy of the
    model, or the whole copy with `full_finetune`."""

    def __init__(self, model: torch.nn.Module, targets: tuple[str, ...], subset: list[Encoded],
                 config: FinetuneConfig, k: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.config, self.k, self.device = config, k, device
        self.model = copy.deepcopy(model)
        if config.full_finetune:
            self.ensemble = None
            self.model.requires_grad_(True)
            params = list(self.model.parameters())
        else:
            self.ensemble = LoRAEnsemble(self.model, len(config.seeds), config.lora_rank,
                                         config.lora_alpha, targets, config.base_seed,
                                         member_ids=[k])
            params = self.ensemble.parameters()
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_warmup_decay(config.steps, WARMUP_RATIO))
        self.autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        self.subset = subset
        self.batcher = Batcher(subset, device)
        self.lengths = np.array([len(e.input_ids) for e in subset], dtype=np.int64)
        self.order: list[np.ndarray] = []

    def _batch_rows(self, step: int) -> np.ndarray:
        """Step k's examples: member k's epoch-seeded batches of the subset, epoch after
        epoch, as the scoring stage trains (the subset is cycled)."""
        while len(self.order) <= step:
            epoch = len(self.order) // -(-len(self.subset) // self.config.batch_size) + 1
            self.order.extend(member_batches(self.lengths, self.config.batch_size,
                                             len(self.config.seeds), self.config.base_seed,
                                             epoch, bucketing=False)[self.k])
        return self.order[step]

    def step(self, step: int) -> float:
        batch = self.batcher.batch([self._batch_rows(step)])
        with self.autocast:
            losses = per_example_losses(self.model, batch.input_ids, batch.attention_mask,
                                        batch.response_mask, batch.targets)
        losses.mean().backward()
        if self.ensemble is not None:
            self.ensemble.clip_per_member(self.config.grad_clip)
        else:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
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
        for rows in collection_batches(lengths, self.config.eval_batch_size, bucketing=True):
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


# --- the measures ----------------------------------------------------------------------------

def final_and_best(curves: Curves, seed: int = 0) -> dict[str, Interval]:
    """Final and best held-out loss (mean over seeds and examples), with 95% intervals from a
    bootstrap over seeds and held-out examples together."""
    final = curves.eval_loss[-1]  # [seeds, examples]
    best_point = curves.eval_loss.mean(axis=(1, 2)).argmin()
    best = curves.eval_loss[best_point]
    return {"final": bootstrap(lambda s, e: final[np.ix_(s, e)].mean(), final.shape, seed=seed),
            "best": bootstrap(lambda s, e: best[np.ix_(s, e)].mean(), best.shape, seed=seed)}


def paired_difference(a: Curves, b: Curves, seed: int = 0) -> Interval:
    """Final held-out loss of a minus b: seeds paired (same initial adapter) and held-out
    examples paired; negative means a ends lower (better)."""
    diff = a.eval_loss[-1] - b.eval_loss[-1]
    return bootstrap(lambda s, e: diff[np.ix_(s, e)].mean(), diff.shape, seed=seed)


def steps_to_reach(curves: Curves, target: float, seeds: np.ndarray | None = None,
                   examples: np.ndarray | None = None) -> float:
    """The first evaluated step at which the mean held-out loss is at most `target`; inf if
    never."""
    losses = curves.eval_loss
    if seeds is not None:
        losses = losses[:, seeds][:, :, examples]
    mean = losses.mean(axis=(1, 2))
    reached = np.flatnonzero(mean <= target)
    return float(curves.eval_steps[reached[0]]) if len(reached) else math.inf


def convergence(method: Curves, reference: Curves, seed: int = 0) -> dict:
    """Steps the method's subset needs to reach the reference's (random's) final held-out
    loss, with a 95% interval (bootstrap over seeds and examples); inf where not reached."""

    def statistic(s: np.ndarray, e: np.ndarray) -> float:
        target = reference.eval_loss[-1][np.ix_(s, e)].mean()
        return steps_to_reach(method, target, s, e)

    shape = reference.eval_loss[-1].shape
    interval = bootstrap(statistic, shape, seed=seed, keep_infinite=True)
    reached = interval.estimate
    return {"steps": None if math.isinf(reached) else reached,
            "low": _finite_or_none(interval.low), "high": _finite_or_none(interval.high),
            "reference_final": float(reference.eval_loss[-1].mean())}


def _finite_or_none(value: float) -> float | None:
    return None if not math.isfinite(value) else value


def run_key(name: str, positions: np.ndarray, config: FinetuneConfig, target: ScoreConfig,
            data_digest: str) -> str:
    """A name that changes whenever anything that affects the run changes."""
    key = json.dumps({"name": name, "subset": hashlib.sha256(positions.tobytes()).hexdigest(),
                      "finetune": asdict(config), "target": config_key(target),
                      "data": data_digest}, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def write_curves(path: Path, curves: Curves) -> None:
    atomic_write_text(path, json.dumps(curves.as_dict()) + "\n")


def read_curves(path: Path) -> Curves:
    return Curves.from_dict(json.loads(path.read_text()))


# --- the benchmark ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FinetuneInputs:
    """The pool (token ids and masks, every record), the held-out set, each method's scores over
    the pool's records, which pool records may be kept (not held out, scorable), and where the
    inputs came from (for the report)."""

    pool: list[Encoded]
    held_out: list[Encoded]
    scores: dict[str, np.ndarray]
    usable: np.ndarray  # bool over pool records
    source: dict
    digest: str
    sketches: str | None = None  # a table of the pool with gradient sketches, for --dedup


def run_finetune_benchmark(inputs: FinetuneInputs, out_dir: Path, target: ScoreConfig,
                           config: FinetuneConfig, budgets: Sequence[float],
                           progress: bool = True, log=print, dedup_methods: Sequence[str] = (),
                           dedup_threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Fine-tune every method's subset at every budget, and the full pool; measure; report.
    Each of `dedup_methods` also with near-duplicates removed from its subset (by the
    gradient sketches of `inputs.sketches`, as `select --diversity dedup`).

    Finished runs (their curves under out_dir/runs, named by everything that affects them) are
    reused, so an interrupted benchmark continues with the runs it had not finished."""
    from ..scoring.proxy import default_targets, load_model, resolve_device, resolve_dtype

    config.validate()
    if not inputs.held_out:
        raise GradfilterError("the held-out set has no scorable record")
    device = resolve_device(target.device)
    dtype = resolve_dtype(target.dtype, device)
    positions = np.flatnonzero(inputs.usable)
    runs = {FULL_POOL: positions}
    diverse = _dedup_by_sketches(inputs, positions, dedup_methods, dedup_threshold)
    for name, chosen in subsets({m: s[positions] for m, s in inputs.scores.items()},
                                budgets, dedup_methods, diverse).items():
        runs[name] = positions[chosen]
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    model, targets = None, target.lora_targets
    curves: dict[str, Curves] = {}
    with progress_bars(progress) as bars, library_bars(shows_library_bars(progress)):
        for name, chosen in runs.items():
            key = run_key(name, chosen, config, target, inputs.digest)
            path = out_dir / "runs" / f"{key}.json"
            if path.is_file():
                log(f"{name}: reusing {path}")
                curves[name] = read_curves(path)
                continue
            if model is None:
                torch.manual_seed(config.base_seed)
                model = load_model(target.proxy, device)
                targets = target.with_targets(default_targets(model)).targets
            log(f"{name}: fine-tuning on {len(chosen)} records, {config.steps} steps x "
                f"{len(config.seeds)} seeds")
            assert targets is not None
            curves[name] = train_subset(model, targets, [inputs.pool[i] for i in chosen],
                                        inputs.held_out, config, device, dtype,
                                        out_dir / "adapters" / name.replace("@", "-"),
                                        target.proxy, bars)
            write_curves(path, curves[name])
    results = summarize(curves, runs, budgets, config, inputs, target)
    _write_reports(out_dir, results, curves, budgets)
    return results


def _dedup_by_sketches(inputs: FinetuneInputs, positions: np.ndarray,
                       methods: Sequence[str], threshold: float):
    """selection -> the selection with near-duplicates removed, the selection's indices being
    into `positions` (None when no method asks for it)."""
    if not methods:
        return None
    unknown = [m for m in methods if m not in inputs.scores]
    if unknown:
        raise GradfilterError(f"--dedup {unknown}: not among the methods compared "
                              f"{list(inputs.scores)}")
    if inputs.sketches is None:
        raise GradfilterError("--dedup needs a G-SNR table with gradient sketches among the "
                              "methods' tables")
    sketches = inputs.sketches

    def load(records: np.ndarray) -> np.ndarray:
        return load_sketch_features(sketches, positions[records])

    return lambda selection: dedup(selection, load, threshold)[0]


def summarize(curves: dict[str, Curves], runs: dict[str, np.ndarray], budgets: Sequence[float],
              config: FinetuneConfig, inputs: FinetuneInputs, target: ScoreConfig) -> dict:
    methods = sorted({name.split("@")[0] for name in runs if name != FULL_POOL})
    per_budget = {}
    for b in budgets:
        key = f"{b:g}"
        rows = {m: curves[f"{m}@{key}"] for m in methods}
        rows[FULL_POOL] = curves[FULL_POOL]
        table = {}
        for name, c in rows.items():
            measures = final_and_best(c)
            entry = {"records": len(runs[f"{name}@{key}"] if name != FULL_POOL else
                                    runs[FULL_POOL]),
                     "final": measures["final"].as_dict(), "best": measures["best"].as_dict()}
            for reference in ("random", "ifd"):
                if reference in rows and reference != name:
                    entry[f"final_vs_{reference}"] = paired_difference(
                        c, rows[reference]).as_dict()
            if name.endswith(DEDUP):  # against plain top-k of the same utility
                entry["final_vs_plain"] = paired_difference(
                    c, rows[name.removesuffix(DEDUP)]).as_dict()
            if "random" in rows:
                entry["steps_to_random_final"] = convergence(c, rows["random"])
            table[name] = entry
        per_budget[key] = table
    return {
        "pool": inputs.source, "records": {"pool": len(inputs.pool),
                                           "usable": int(inputs.usable.sum()),
                                           "held_out": len(inputs.held_out)},
        "budgets": [f"{b:g}" for b in budgets], "methods": methods,
        "finetune": asdict(config), "target": asdict(target),
        "results": per_budget,
        "subsets": {name: chosen.tolist() for name, chosen in runs.items()},  # pool records
        "curves": {name: {"eval_steps": c.eval_steps,
                          "eval_loss_mean": c.eval_loss.mean(axis=(1, 2)).tolist(),
                          "train_loss_mean": c.train_loss.mean(axis=0).tolist(),
                          "seconds": c.seconds} for name, c in curves.items()},
    }


def results_markdown(results: dict) -> str:
    rec, ft = results["records"], results["finetune"]
    lines = [f"# Fine-tune benchmark: {results['pool'].get('data', '')}", "",
             f"Pool {rec['pool']} records ({rec['usable']} selectable), held-out "
             f"{rec['held_out']}; target {results['target']['proxy']} ({_kind(ft)}), "
             f"{ft['steps']} steps of batch {ft['batch_size']} for every subset (cycled), "
             f"seeds {ft['seeds']}.", "",
             "Held-out loss: mean response cross-entropy per example, averaged over examples and "
             "seeds (lower is better). Brackets: 95% interval, bootstrap over seeds and held-out "
             "examples; differences are paired (same seeds' initial adapters, same examples) and "
             "marked * where the interval excludes zero. Steps to random's final loss: the "
             "first evaluated step where the subset's mean held-out loss is at or below "
             "random's final one (- if never).", ""]
    head = ["subset", "records", "final", "best", "final - random", "final - IFD",
            "steps to random's final"]
    dedup = any(name.endswith(DEDUP) for name in results["methods"])
    if dedup:
        head.append("final - plain top-k")
    for budget, table in results["results"].items():
        lines += [f"## Budget {float(budget):.0%}", "", _row(head), _row(["---"] * len(head))]
        for name, e in table.items():
            steps = e.get("steps_to_random_final")
            lines.append(_row([name, str(e["records"]), _cell(e["final"]), _cell(e["best"]),
                               _diff(e.get("final_vs_random")), _diff(e.get("final_vs_ifd")),
                               _steps(steps), *([_diff(e.get("final_vs_plain"))] if dedup
                                                else [])]))
        lines.append("")
    return "\n".join(lines)


def _kind(finetune: dict) -> str:
    return "full fine-tune" if finetune["full_finetune"] else f"LoRA rank {finetune['lora_rank']}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell(i: dict) -> str:
    return f"{i['estimate']:.4f} [{i['low']:.4f}, {i['high']:.4f}]"


def _diff(i: dict | None) -> str:
    if i is None:
        return "-"
    star = "*" if i["low"] > 0 or i["high"] < 0 else ""
    return f"{i['estimate']:+.4f} [{i['low']:+.4f}, {i['high']:+.4f}]{star}"


def _steps(s: dict | None) -> str:
    if s is None:
        return "-"
    shown = ["-" if v is None else f"{v:g}" for v in (s["steps"], s["low"], s["high"])]
    return f"{shown[0]} [{shown[1]}, {shown[2]}]"


def _write_reports(out_dir: Path, results: dict, curves: dict[str, Curves],
                   budgets: Sequence[float]) -> None:
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    plot_curves(out_dir / "heldout.png", curves, budgets)
    write_run_record(out_dir / "results.json", {"stage": "bench finetune", **{
        k: results[k] for k in ("pool", "records", "budgets", "methods", "finetune", "target")}})


def plot_curves(path: Path, curves: dict[str, Curves], budgets: Sequence[float]) -> None:
    """Held-out loss against steps, one panel per budget, one line per method (the mean over
    seeds and examples; the band is the min-max of the seeds' means)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..outputs import atomic_path

    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 4), squeeze=False)
    for ax, b in zip(axes.flat, budgets, strict=True):
        for name, c in curves.items():
            if name != FULL_POOL and not name.endswith(f"@{b:g}"):
                continue
            per_seed = c.eval_loss.mean(axis=2)  # [points, seeds]
            line, = ax.plot(c.eval_steps, per_seed.mean(axis=1), label=name.split("@")[0],
                            linestyle="--" if name == FULL_POOL else "-")
            ax.fill_between(c.eval_steps, per_seed.min(axis=1), per_seed.max(axis=1),
                            color=line.get_color(), alpha=0.15)
        ax.set(title=f"budget {b:.0%}", xlabel="optimiser step", ylabel="held-out loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# --- where the inputs come from --------------------------------------------------------------

def inputs_from_noise(noise_dir: Path, methods: Sequence[str] | None, target: ScoreConfig,
                      held_out: Path | None, held_out_share: float, seed: int,
                      corrupt_seed: int | None = None, allow_data_mismatch: bool = False,
                      log=print) -> FinetuneInputs:
    """The noise benchmark's mixed set as the pool and its tables as the methods' scores
    (selection on noisy data); held out: `held_out` (a file of prompts with reference answers)
    or a seeded share of the clean records, taken out of the pool (evaluation on clean
    references). Each table must have been scored on the mixed set (`binding`), unless
    `allow_data_mismatch`."""
    from ..binding import require_table_of
    from ..data.dataset import read_dataset
    from ..table import load_stats, utility_scores
    from .noise import run_table

    noise = json.loads(_read_text(noise_dir / "results.json"))
    draw = noise["seeds"][str(noise["corrupt_seeds"][0] if corrupt_seed is None
                               else corrupt_seed)]
    pool = read_dataset(noise_dir / draw["mixed"])
    import pyarrow.parquet as pq

    labels = pq.ParquetFile(noise_dir / draw["labels"]).read(["corruption"])
    clean = np.array([label is None for label in labels.column(0).to_pylist()])
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
    inputs = _inputs(pool, scores, target, held_out, held_out_share, seed, clean, source)
    return replace(inputs, sketches=_sketched_table(tables.values()))


def inputs_from_pool(pool_path: str, tables: dict[str, str], target: ScoreConfig,
                     held_out: Path | None, held_out_share: float, seed: int,
                     allow_data_mismatch: bool = False, log=print) -> FinetuneInputs:
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
    inputs = _inputs(pool, scores, target, held_out, held_out_share, seed,
                     np.ones(len(pool.records), dtype=bool), {"data": str(pool_path)})
    return replace(inputs, sketches=_sketched_table(tables.values()))


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
            held_out_share: float, seed: int, clean: np.ndarray, source: dict) -> FinetuneInputs:
    from ..data.dataset import read_dataset
    from ..scoring.proxy import load_tokenizer
    from ..scoring.score import tokenize
    from ..seeds import HELD_OUT_STREAM, derived_seed

    tokenizer = load_tokenizer(target.proxy)
    tokens = tokenize(pool, tokenizer, target, skip_bad_records=True)
    usable = np.array([r is None for r in tokens.reasons])
    if held_out is not None:
        other = tokenize(read_dataset(held_out), tokenizer, target, skip_bad_records=True)
        evaluation = [other.encoded[i] for i in other.scorable]
        source["held_out"] = str(held_out)
    else:
        if not 0 < held_out_share < 1:
            raise GradfilterError(f"--held-out-share must be in (0, 1), got {held_out_share}")
        candidates = np.flatnonzero(usable & clean)
        rng = np.random.default_rng(derived_seed(seed, HELD_OUT_STREAM))
        taken = np.sort(rng.permutation(candidates)[:round(held_out_share * len(candidates))])
        usable[taken] = False
        evaluation = [tokens.encoded[i] for i in taken]
        source["held_out"] = f"{len(taken)} clean records of the pool (seeded), not selectable"
    digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode())
    for item in (*tokens.encoded, *evaluation):
        digest.update(item.input_ids.tobytes())
        digest.update(item.response_mask.tobytes())
    return FinetuneInputs(tokens.encoded, evaluation, scores, usable, source,
                          digest.hexdigest())
