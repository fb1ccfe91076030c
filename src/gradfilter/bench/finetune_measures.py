"""The fine-tune benchmark's readings, verdicts and report (docs/method.md, "Fine-tune
benchmark"); numpy only, no torch.

Every run of one budget is evaluated at the same steps on the same held-out examples, and seed
s of every run starts from the same adapter, so a comparison is paired by seed and by example;
random's row is several reselected subsets, resampled as a dimension of their own. Two readings
of a held-out curve: `auc`, the mean held-out loss over the evaluations after step 0 (the area
under the curve, declared before any run as the verdict's reading), and `final`, the loss at
the last step (shown beside it). Step 0 is the untrained model: the same for every run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .intervals import Interval, bootstrap
from .intervals import verdict as difference_verdict

FULL_POOL = "full"  # the reference run: the whole pool, the budget's steps
RANDOM = "random"  # the mean of several reselected random subsets
UNTRAINED = "untrained"  # step 0: the target before any training
DEDUP = "+dedup"  # a method's subset with near-duplicates removed (select --diversity dedup)
DECLARED = "auc"  # the reading the verdict against random uses, declared before the runs
READINGS = {
    "auc": "area under the held-out curve: the mean held-out loss over the evaluations after "
           "step 0",
    "final": "the held-out loss at the last step",
}
VERDICTS = ("better", "tied", "worse")
DEFAULT_EPOCHS = 2.0  # the budget: passes over a budget's subset (docs/method.md)
MIN_RANDOM_DRAWS = 3  # random's row: the mean of at least this many reselected subsets


@dataclass
class Curves:
    """One run (a subset at a budget) over its seeds."""

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


def stacked(draws: Sequence[Curves]) -> np.ndarray:
    """The held-out losses of one row's runs (one, or random's draws): [points, draws, seeds,
    examples]."""
    return np.stack([c.eval_loss for c in draws], axis=1)


def read(losses: np.ndarray, reading: str) -> np.ndarray:
    """[draws, seeds, examples]: each run's `reading` of its held-out curve."""
    if reading == "final":
        return losses[-1]
    if reading == "auc":
        return losses[1:].mean(axis=0)
    raise ValueError(f"unknown reading {reading!r}")


def _mean(values: np.ndarray, draws: np.ndarray, seeds: np.ndarray,
          examples: np.ndarray) -> float:
    return float(values[np.ix_(draws, seeds, examples)].mean())


def level(values: np.ndarray, seed: int = 0) -> Interval:
    """The mean of [draws, seeds, examples] values, with a bootstrap over all three."""
    return bootstrap(lambda d, s, e: _mean(values, d, s, e), values.shape, seed=seed)


def difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> Interval:
    """Mean of a minus mean of b ([draws, seeds, examples] each): seeds and examples paired,
    each side's draws resampled apart (a method's subset is not paired with a random draw)."""
    return bootstrap(lambda da, db, s, e: _mean(a, da, s, e) - _mean(b, db, s, e),
                     (a.shape[0], b.shape[0], *a.shape[1:]), seed=seed)


def verdict(diff: Interval) -> str:
    """better / worse where the interval of (loss minus random's) excludes zero, else tied
    (`intervals.verdict` for a loss: lower is better)."""
    return difference_verdict(diff, higher_is_better=False)


def overfitting(losses: np.ndarray, eval_steps: Sequence[int], steps: int) -> dict:
    """Whether a run overfits: its final held-out loss above the untrained model's, or above its
    own best evaluation, by more than the paired interval; and whether the loss rises over the
    last half of training (final against the first evaluation at or after half the steps).
    Random's draws are averaged first: the question is about these runs, not about random
    subsets at large."""
    losses = losses.mean(axis=1, keepdims=True)
    final = losses[-1]
    best = int(losses.mean(axis=(1, 2, 3)).argmin())
    middle = next(i for i, step in enumerate(eval_steps) if 2 * step >= steps)
    vs_untrained = level(final - losses[0])
    vs_best = level(final - losses[best])
    rising = level(final - losses[middle]) if middle < len(eval_steps) - 1 else None
    above_untrained = vs_untrained.low > 0
    above_best = best < len(eval_steps) - 1 and vs_best.low > 0
    if above_untrained:
        words = f"overfits: ends above the untrained model by {_signed(vs_untrained)}"
    elif above_best:
        words = f"overfits: ends above its best (step {eval_steps[best]}) by {_signed(vs_best)}"
    elif vs_untrained.high >= 0:
        words = f"did not learn: ends no lower than the untrained model ({_signed(vs_untrained)})"
    elif rising is not None and rising.low > 0:
        words = (f"rising over the last half: {_signed(rising)} from step "
                 f"{eval_steps[middle]}")
    else:
        words = ""
    return {"flagged": bool(above_untrained or above_best), "words": words,
            "final_vs_untrained": vs_untrained.as_dict(), "final_vs_best": vs_best.as_dict(),
            "best_step": eval_steps[best], "learned": bool(vs_untrained.high < 0),
            "rising_over_last_half": None if rising is None else {
                "from_step": eval_steps[middle], "change": rising.as_dict(),
                "rising": bool(rising.low > 0)}}


def _rises(entry: dict) -> bool:
    rising = entry["overfitting"]["rising_over_last_half"]
    return rising is not None and rising["rising"]


def steps_to_reach(curve: np.ndarray, eval_steps: Sequence[int], target: float) -> float:
    """The first evaluated step after step 0 at which `curve` (the mean held-out loss at each
    evaluation) is at most `target`; inf if never."""
    reached = np.flatnonzero(curve[1:] <= target)
    return float(eval_steps[reached[0] + 1]) if len(reached) else math.inf


def convergence(method: np.ndarray, reference: np.ndarray, eval_steps: Sequence[int],
                reference_learned: bool, steps: int, seed: int = 0) -> dict:
    """Steps the method's run needs to reach random's final held-out loss, with a 95% interval
    (bootstrap over both sides' draws, seeds and examples). Defined only where random's curve
    falls (its final loss below the untrained model's, the interval excluding zero): where it
    does not, every run starts at or below the target and the count would read 0."""
    reference_final = float(reference[-1].mean())
    untrained = float(reference[0].mean())
    base = {"reference_final": reference_final, "untrained": untrained}
    if not reference_learned:
        return {**base, "defined": False, "steps": None, "low": None, "high": None,
                "why": f"random's final held-out loss ({reference_final:.4f}) is not below the "
                       f"untrained model's ({untrained:.4f}): it is reached before training"}

    def statistic(dm: np.ndarray, dr: np.ndarray, s: np.ndarray, e: np.ndarray) -> float:
        target = _mean(reference[-1], dr, s, e)
        curve = method[:, dm][:, :, s][:, :, :, e].mean(axis=(1, 2, 3))
        if not target < curve[0]:  # this resample's random did not fall
            return math.nan
        return steps_to_reach(curve, eval_steps, target)

    interval = bootstrap(statistic, (method.shape[1], reference.shape[1], *method.shape[2:]),
                         seed=seed, keep_infinite=True)
    reached = interval.estimate
    return {**base, "defined": True, "steps": None if math.isinf(reached) else reached,
            "low": _finite_or_none(interval.low), "high": _finite_or_none(interval.high),
            "why": None if math.isfinite(reached) else f"not reached in {steps} steps"}


def _finite_or_none(value: float) -> float | None:
    return None if not math.isfinite(value) else value


# --- one budget's table ----------------------------------------------------------------------

def budget_results(rows: dict[str, list[Curves]], records: dict[str, int], steps: int,
                   batch_size: int) -> tuple[dict, dict]:
    """Every row of one budget (the untrained model first, then the subsets, random, the full
    pool) and the budget's schedule and warnings."""
    losses = {name: stacked(draws) for name, draws in rows.items()}
    eval_steps = next(iter(rows.values()))[0].eval_steps
    first = next(iter(losses.values()))
    untrained = np.repeat(first[:1, :1], len(eval_steps), axis=0)  # a flat curve at step 0
    table = {UNTRAINED: _untrained_row(untrained, losses)}
    learned = {}
    for name, run in losses.items():
        table[name] = _row(name, run, losses, records[name], steps, batch_size, eval_steps)
        learned[name] = table[name]["overfitting"]["learned"]
    if RANDOM in losses:
        for name, run in losses.items():
            table[name]["steps_to_random_final"] = convergence(
                run, losses[RANDOM], eval_steps, learned[RANDOM], steps)
    schedule = _schedule(table, records, steps, batch_size, eval_steps)
    for entry in table.values():  # a verdict read where every subset overfits is no result
        if "vs_random" in entry:
            entry["vs_random"]["readable"] = not schedule["every_subset_overfits"]
    return table, schedule


def _untrained_row(untrained: np.ndarray, losses: dict[str, np.ndarray]) -> dict:
    entry: dict = {"records": 0, "passes": 0.0}
    for reading in READINGS:
        entry[reading] = level(read(untrained, reading)).as_dict()
        if RANDOM in losses:
            entry[f"{reading}_vs_random"] = difference(
                read(untrained, reading), read(losses[RANDOM], reading)).as_dict()
    return entry


def _row(name: str, run: np.ndarray, losses: dict[str, np.ndarray], records: int, steps: int,
         batch_size: int, eval_steps: Sequence[int]) -> dict:
    entry: dict = {"records": records, "passes": steps * batch_size / max(records, 1)}
    for reading in READINGS:
        entry[reading] = level(read(run, reading)).as_dict()
    best = int(run.mean(axis=(1, 2, 3)).argmin())
    entry["best"] = level(run[best]).as_dict()
    references = [(RANDOM, RANDOM), ("ifd", "ifd"), ("length", "length")]  # length: longest
    if name.endswith(DEDUP):  # against plain top-k of the same utility
        references.append(("plain", name.removesuffix(DEDUP)))
    for label, other in references:
        if other in losses and other != name:
            for reading in READINGS:
                entry[f"{reading}_vs_{label}"] = difference(
                    read(run, reading), read(losses[other], reading)).as_dict()
    if RANDOM in losses and name != RANDOM:
        entry["vs_random"] = {"declared": DECLARED, **{
            reading: verdict(Interval(**entry[f"{reading}_vs_random"])) for reading in READINGS}}
    if name == RANDOM:
        entry["draws"] = run.shape[1]
        entry["draw_spread"] = {reading: _spread(read(run, reading)) for reading in READINGS}
    entry["overfitting"] = overfitting(run, eval_steps, steps)
    return entry


def _spread(values: np.ndarray) -> dict:
    """How random's reselected subsets differ: each draw's mean, their SD and range."""
    per_draw = values.mean(axis=(1, 2))
    return {"per_draw": per_draw.tolist(),
            "sd": float(per_draw.std(ddof=1)) if len(per_draw) > 1 else None,
            "low": float(per_draw.min()), "high": float(per_draw.max())}


def _schedule(table: dict, records: dict[str, int], steps: int, batch_size: int,
              eval_steps: Sequence[int]) -> dict:
    subsets = [name for name in table if name not in (UNTRAINED, FULL_POOL)]
    every_subset = bool(subsets) and all(_rises(table[name]) for name in subsets)
    full = FULL_POOL in table and _rises(table[FULL_POOL])
    warnings = []
    if every_subset:
        warnings.append(
            "every subset's held-out loss rises over the last half of training"
            + (", the full pool's too" if full else "")
            + ": at this setting the verdict measures how fast a subset overfits, not what it "
              "teaches; lower --epochs or --lr (docs/method.md)")
    subset_records = [records[name] for name in subsets]
    return {"steps": steps, "batch_size": batch_size,
            "eval_every": eval_steps[1] - eval_steps[0] if len(eval_steps) > 1 else steps,
            "eval_steps": list(eval_steps),
            "subset_records": max(subset_records) if subset_records else None,
            "full_pool_records": records.get(FULL_POOL),
            "subset_passes": (steps * batch_size / max(subset_records) if subset_records
                              else None),
            "full_pool_passes": (steps * batch_size / records[FULL_POOL]
                                 if FULL_POOL in records else None),
            "every_subset_overfits": every_subset, "full_pool_overfits": bool(full),
            "warnings": warnings}


# --- the report ------------------------------------------------------------------------------

def results_markdown(results: dict) -> str:
    rec, ft = results["records"], results["finetune"]
    lines = [f"# Fine-tune benchmark: {results['pool'].get('data', '')}", "",
             f"Pool {rec['pool']} records ({rec['usable']} selectable). Held out "
             f"{rec['held_out']}: {results['pool'].get('held_out', '')}; "
             f"{results['pool'].get('groups', 'split by record')}. Target "
             f"{results['target']['proxy']} ({_kind(ft)}), batch {ft['batch_size']}, lr "
             f"{ft['lr']:g}, {_budget_words(ft)}; seeds {ft['seeds']} (each value seeds its "
             f"run's LoRA initialisation and data order); random: the mean of "
             f"{ft['random_draws']} reselected random subsets; {results['threads']} CPU "
             f"thread(s).", "",
             f"**Verdict reading, declared before the runs: {READINGS[DECLARED]} (AUC).** The "
             "final loss is shown beside it. Better / tied / worse than random: the 95% "
             "interval of the paired difference is below zero / includes zero / is above "
             "zero. Held-out loss: mean response cross-entropy per example (lower is better), "
             "averaged over held-out examples, seeds and random's draws; brackets: 95% "
             "bootstrap interval over all three, differences paired by seed and example. "
             "Step 0 is the untrained model, the same for every run.", ""]
    lines += _summary_lines(results)
    for budget, table in results["results"].items():
        lines += _budget_lines(budget, table, results["schedule"][budget])
        lines += ["Mean held-out loss at each evaluation (step 0: the untrained model):", "",
                  *curve_table(results, budget), ""]
    from .costs import cost_markdown

    lines += cost_markdown(results.get("cost"))
    return "\n".join(lines)


def _budget_words(finetune: dict) -> str:
    if finetune["steps"] is not None:
        return f"{finetune['steps']} steps at every budget (--steps overrides the epochs)"
    return f"{finetune['epochs']:g} epochs over each budget's subset"


def _summary_lines(results: dict) -> list[str]:
    lines = ["## Verdict against random (AUC; final beside it)", ""]
    for budget, table in results["results"].items():
        for name, e in table.items():
            if "vs_random" not in e or name == UNTRAINED:
                continue
            lines.append(
                f"- {float(budget):.0%} {name}: **{e['vs_random']['auc']}** "
                f"({_signed(e['auc_vs_random'])}); final: {e['vs_random']['final']} "
                f"({_signed(e['final_vs_random'])})"
                + (f"; {e['overfitting']['words']}" if e["overfitting"]["words"] else "")
                + ("" if e["vs_random"]["readable"] else
                   "; **not a result: every subset overfits at this budget**"))
    for warning in results.get("warnings", []):
        lines.append(f"- **Warning**: {warning}")
    return [*lines, ""]


def _budget_lines(budget: str, table: dict, schedule: dict) -> list[str]:
    passes = (f"each subset record seen {schedule['subset_passes']:.2g} times"
              if schedule["subset_passes"] is not None else "")
    if schedule["full_pool_passes"] is not None:
        passes += f", each full-pool record {schedule['full_pool_passes']:.2g} times"
    lines = [f"## Budget {float(budget):.0%}", "",
             f"{schedule['steps']} steps of batch {schedule['batch_size']} for every run "
             f"({passes}); held-out loss at steps {_steps_list(schedule['eval_steps'])}.", ""]
    lines += [line for w in schedule["warnings"] for line in (f"**Warning**: {w}.", "")]
    head = ["subset", "records", "passes", "AUC", "AUC - random", "final", "final - random",
            "vs random: AUC (final)", "final - IFD", "final - length", "steps to random's final",
            "overfitting"]
    dedup = any(name.endswith(DEDUP) for name in table)
    if dedup:
        head.append("AUC - plain top-k")
    lines += [_cells(head), _cells(["---"] * len(head))]
    for name, e in table.items():
        verdicts = e.get("vs_random")
        cells = [name if name != UNTRAINED else "untrained (step 0)", str(e["records"]),
                 f"{e['passes']:.2g}", _cell(e["auc"]), _diff(e.get("auc_vs_random")),
                 _cell(e["final"]), _diff(e.get("final_vs_random")),
                 f"{verdicts['auc']} ({verdicts['final']})" if verdicts else "-",
                 _diff(e.get("final_vs_ifd")), _diff(e.get("final_vs_length")),
                 steps_to_random_text(e.get("steps_to_random_final")),
                 _overfit(e)]
        lines.append(_cells([*cells, *([_diff(e.get("auc_vs_plain"))] if dedup else [])]))
    random = table.get(RANDOM)
    if random is not None:
        spread = random["draw_spread"]
        lines += ["", f"Random's {random['draws']} draws: AUC "
                      f"{_values(spread['auc']['per_draw'])} (SD {_sd(spread['auc'])}), final "
                      f"{_values(spread['final']['per_draw'])} (SD {_sd(spread['final'])})."]
    return [*lines, ""]


def curve_table(results: dict, budget: str) -> list[str]:
    """The mean held-out loss of every row at each evaluation, step 0 included."""
    schedule = results["schedule"][budget]
    lines = [_cells(["subset", *map(str, schedule["eval_steps"])]),
             _cells(["---"] * (len(schedule["eval_steps"]) + 1))]
    for name, mean in results["mean_curves"][budget].items():
        lines.append(_cells([name, *(f"{v:.4f}" for v in mean)]))
    return lines


def _kind(finetune: dict) -> str:
    return "full fine-tune" if finetune["full_finetune"] else f"LoRA rank {finetune['lora_rank']}"


def _cells(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell(i: dict) -> str:
    return f"{i['estimate']:.4f} [{i['low']:.4f}, {i['high']:.4f}]"


def _signed(i: Interval | dict) -> str:
    i = i if isinstance(i, dict) else i.as_dict()
    return f"{i['estimate']:+.4f} [{i['low']:+.4f}, {i['high']:+.4f}]"


def _diff(i: dict | None) -> str:
    if i is None:
        return "-"
    star = "*" if i["low"] > 0 or i["high"] < 0 else ""
    return _signed(i) + star


def steps_to_random_text(s: dict | None) -> str:
    """Steps to reach random's final loss, with its interval, or why it is not defined."""
    if s is None:
        return "-"
    if not s["defined"]:
        return "not defined (random does not end below the untrained model)"
    if s["steps"] is None and s["why"]:
        shown = ["-" if v is None else f"{v:g}" for v in (s["low"], s["high"])]
        return f"{s['why']} [{shown[0]}, {shown[1]}]"
    shown = ["-" if v is None else f"{v:g}" for v in (s["steps"], s["low"], s["high"])]
    return f"{shown[0]} [{shown[1]}, {shown[2]}]"


def _overfit(e: dict) -> str:
    if "overfitting" not in e:
        return "-"
    return e["overfitting"]["words"] or "no"


def _steps_list(steps: Sequence[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 12 else \
        f"{steps[0]}, {steps[1]}, ..., {steps[-1]}"


def _values(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def _sd(spread: dict) -> str:
    return "-" if spread["sd"] is None else f"{spread['sd']:.4f}"
