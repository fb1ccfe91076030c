"""The noise benchmark's measures and verdicts (method.md, "Noise benchmark"; evaluation.md §1).
A selector (`selectors`: a subset kept at each budget, not a ranking) is measured by
`selector_metrics`: its contamination, compared the same ways.

Every method is measured on one corruption draw with one paired bootstrap over the records
(the same resamples for every method; each resample re-selects every method's top records) and
compared three ways, each by whether the 95% interval of the difference excludes zero:

- with random's **expectation** on the same records (AUROC 0.5; AUPRC the average precision a
  random order has on average; contamination the corruption rate), recomputed on every
  resample, so the paired difference is the method minus what random would score there;
- with the `REFERENCES` (IFD, `length`), paired on the same resamples.

A share of kept records (contamination) carries its Clopper-Pearson interval, and a difference
of shares the bootstrap's interval widened to contain the exact one (`intervals.widened`):
a subset with no corrupted record is never read as a certainty. Random is also shown as the
spread of many random orders of the same records (`random_reselections`), never as one draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..selection import select_top
from .intervals import (
    RESAMPLES,
    Interval,
    Ranking,
    auroc_of_sums,
    bounded,
    percentile_interval,
    precision_of_sums,
    resample_weight_blocks,
    share_difference,
    share_interval,
    shifted,
    t_interval,
    verdict,
    widened,
)

REFERENCES = ("ifd", "length")  # the methods every other is compared with, besides random
RANDOM_DRAWS = 200  # random orders of the pool behind random's spread


def measure_names(budgets: Sequence[float]) -> list[str]:
    return ["auroc", "auprc", *[f"contamination@{b:g}" for b in budgets]]


def higher_is_better(measure: str) -> bool:
    """AUROC and AUPRC: higher is better; contamination: lower."""
    return not measure.startswith("contamination")


def expected_average_precision(records: int, corrupted: float) -> float:
    """The mean, over all orders of `records` distinct records, of the average precision of
    finding the `corrupted` ones first: H/N + (K - 1)(N - H) / (N (N - 1)), H the N-th
    harmonic number (the precision at each position averaged over where the corrupted fall).
    Above the corruption rate K / N on a small pool (0.214 for 60 of 300)."""
    if corrupted <= 0 or records < 1:
        return math.nan
    harmonic = _harmonic(records)
    spread = (corrupted - 1) * (records - harmonic) / (records * (records - 1)) if records > 1 \
        else 0.0
    return harmonic / records + spread


@lru_cache(maxsize=64)
def _harmonic(n: int) -> float:
    return float(np.sum(1.0 / np.arange(1, n + 1)))


def random_expectation(corrupted: np.ndarray, budgets: Sequence[float],
                       weights: np.ndarray | None = None) -> np.ndarray:
    """Random's expected AUROC, AUPRC and contamination at each budget on the records ([measures])
    or on resamples of them (`weights`, [resamples, records] multiplicities: [resamples,
    measures])."""
    w = np.ones((1, len(corrupted))) if weights is None else np.atleast_2d(weights)
    records, bad = w.sum(axis=1), (w * corrupted).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = bad / records
    precision = [expected_average_precision(round(n), k) for n, k in zip(records, bad,
                                                                           strict=True)]
    values = np.column_stack([np.full(len(w), 0.5), precision,
                              *[rate] * len(budgets)])
    return values[0] if weights is None else values


def random_reselections(corrupted: np.ndarray, budgets: Sequence[float],
                        draws: int = RANDOM_DRAWS, seed: int = 0) -> np.ndarray:
    """[draws, measures]: AUROC, AUPRC and contamination at each budget of `draws` random orders
    of the records (vectorised, in chunks to bound memory)."""
    rng = np.random.default_rng(seed)
    n = len(corrupted)
    n_bad = int(corrupted.sum())
    pairs = n_bad * (n - n_bad)
    kept = [math.floor(b * n + 0.5) for b in budgets]
    out = []
    for start in range(0, draws, 25):
        size = min(25, draws - start)
        bad = corrupted[np.argsort(rng.random((size, n)), axis=1)]  # kept first
        clean_above = np.cumsum(~bad, axis=1)
        auroc = (clean_above * bad).sum(axis=1) / pairs if pairs else np.full(size, np.nan)
        from_bottom = bad[:, ::-1]
        precision = np.cumsum(from_bottom, axis=1) / np.arange(1, n + 1)
        auprc = ((precision * from_bottom).sum(axis=1) / n_bad if n_bad
                 else np.full(size, np.nan))
        shares = [bad[:, :k].mean(axis=1) if k else np.full(size, np.nan) for k in kept]
        out.append(np.column_stack([auroc, auprc, *shares]))
    return np.concatenate(out)


def random_summary(expectation: np.ndarray, draws: np.ndarray, names: list[str]) -> dict:
    """Random as its expectation and as the 2.5-97.5% band of its random reselections."""
    bands = {}
    for k, name in enumerate(names):
        finite = draws[:, k][np.isfinite(draws[:, k])]
        low, high = np.percentile(finite, [2.5, 97.5]) if len(finite) else (math.nan,) * 2
        bands[name] = {"low": float(low), "high": float(high),
                       "mean": float(finite.mean()) if len(finite) else math.nan}
    return {"expectation": dict(zip(names, map(float, expectation), strict=True)),
            "reselections": {"draws": len(draws), **bands}}


def method_metrics(all_scores: dict[str, np.ndarray], labels: Sequence[str | None],
                   budgets: Sequence[float], resamples: int = RESAMPLES,
                   seed: int = 0) -> dict[str, dict]:
    """Every method's AUROC (clean above corrupted), AUPRC (corrupted found at the bottom) and
    contamination per budget with 95% intervals; its differences to random's expectation and
    to the `REFERENCES` among the methods, each with a verdict; and the same per corruption
    kind (AUROC against 0.5, contamination)."""
    pool = _Pool(np.array([label or "" for label in labels]), list(budgets))
    rankings = {m: Ranking(s) for m, s in all_scores.items()}

    def measures(weights: np.ndarray) -> np.ndarray:
        """[resamples, methods, measures + kinds] for a block of resamples' weights."""
        return np.stack([pool.measures(rankings[m], weights) for m in all_scores], axis=1)

    everyone = np.ones((1, len(pool.labels)))
    estimate = measures(everyone)[0]
    blocks, expected_blocks = [], []
    for weights in resample_weight_blocks(len(pool.labels), resamples, seed):
        blocks.append(measures(weights))
        expected_blocks.append(random_expectation(pool.corrupted, pool.budgets, weights))
    draws = np.concatenate(blocks)  # [resamples, methods, columns]
    expected_draws = np.concatenate(expected_blocks)
    expected = random_expectation(pool.corrupted, pool.budgets)
    methods = list(all_scores)
    counts = {m: pool.kept_counts(s) for m, s in all_scores.items()}
    result = {}
    for i, m in enumerate(methods):
        entry = pool.intervals(estimate[i], draws[:, i], counts[m])
        entry["vs_random"] = pool.versus_expectation(estimate[i], draws[:, i], expected,
                                                     expected_draws, counts[m])
        for reference in REFERENCES:
            if reference in all_scores and reference != m:
                j = methods.index(reference)
                entry[f"vs_{reference}"] = pool.versus_method(
                    estimate[i] - estimate[j], draws[:, i] - draws[:, j], counts[m],
                    counts[reference])
        entry["verdicts"] = verdicts_of(entry)
        entry.update(pool.by_kind(estimate[i], draws[:, i], counts[m]))
        result[m] = entry
    return result


def contamination(scores: np.ndarray, labels: np.ndarray, budget: float) -> dict[str, float]:
    """Share of the records selected at `budget` that are corrupted: overall ("all") and per
    kind. `labels` holds the kind, or "" where clean."""
    picked = labels[select_top(scores, ratio=budget).indices]
    kinds = sorted(set(labels) - {""})
    if len(picked) == 0:
        return {"all": float("nan"), **dict.fromkeys(kinds, float("nan"))}
    return {"all": float((picked != "").mean()), **{k: float((picked == k).mean()) for k in kinds}}


def verdicts_of(entry: dict) -> dict[str, dict[str, str]]:
    """better / tied / worse per reference (random and each `vs_` entry) and measure."""
    return {name.removeprefix("vs_"): {measure: verdict(d, higher_is_better(measure))
                                       for measure, d in differences.items()}
            for name, differences in entry.items() if name.startswith("vs_")}


class _Pool:
    """One corruption draw's labels (the kind, "" where clean) and the budgets: the pieces
    `method_metrics` assembles per method."""

    def __init__(self, labels: np.ndarray, budgets: list[float]) -> None:
        self.labels, self.budgets = labels, budgets
        self.clean, self.corrupted = labels == "", labels != ""
        self.kinds = sorted(set(labels) - {""})
        self.names = measure_names(budgets)
        self.keys = [f"{b:g}" for b in budgets]
        self.of_kind = {kind: labels == kind for kind in self.kinds}

    def measures(self, ranking: Ranking, weights: np.ndarray) -> np.ndarray:
        """[resamples, measures + kinds] of one ranking: AUROC, AUPRC (the corrupted found from
        the lowest score up), contamination per budget, AUROC clean vs each kind; from one
        weight per tied group for the clean records and for each kind."""
        clean = ranking.sums(weights * self.clean)
        kinds = [ranking.sums(weights * self.of_kind[kind]) for kind in self.kinds]
        bad = np.sum(kinds, axis=0) if kinds else np.zeros_like(clean)
        return np.column_stack([
            auroc_of_sums(clean, bad), precision_of_sums(bad, clean + bad),
            ranking.top_shares(self.corrupted, self.budgets, weights),
            *[auroc_of_sums(clean, k) for k in kinds]])

    def kept_counts(self, scores: np.ndarray) -> dict[str, dict]:
        """Per budget: how many a method keeps, how many of them are corrupted, per kind."""
        out = {}
        for key, b in zip(self.keys, self.budgets, strict=True):
            kept = self.labels[select_top(scores, ratio=b).indices]
            out[key] = {"kept": len(kept), "corrupted": int((kept != "").sum()),
                        "by_kind": {k: int((kept == k).sum()) for k in self.kinds}}
        return out

    def intervals(self, estimate: np.ndarray, draws: np.ndarray, counts: dict) -> dict:
        entry = {name: percentile_interval(estimate[k], draws[:, k]).as_dict()
                 for k, name in enumerate(self.names[:2])}
        for key in self.keys:
            entry[f"contamination@{key}"] = share_interval(counts[key]["corrupted"],
                                                           counts[key]["kept"]).as_dict()
        entry["selected"] = {key: counts[key]["kept"] for key in self.keys}
        entry["kept_corrupted"] = {key: counts[key]["corrupted"] for key in self.keys}
        return entry

    def versus_expectation(self, estimate: np.ndarray, draws: np.ndarray,
                           expected: np.ndarray, expected_draws: np.ndarray,
                           counts: dict) -> dict:
        """Method minus random's expectation, paired per resample; a contamination difference
        widened to contain the share's exact interval minus the pool's rate."""
        out = {}
        rate = float(self.corrupted.mean())
        for k, name in enumerate(self.names):
            boot = percentile_interval(estimate[k] - expected[k],
                                       draws[:, k] - expected_draws[:, k])
            if higher_is_better(name):
                out[name] = boot.as_dict()
                continue
            key = name.removeprefix("contamination@")
            exact = share_interval(counts[key]["corrupted"], counts[key]["kept"])
            out[name] = widened(boot, shifted(exact, -rate)).as_dict()
        return out

    def versus_method(self, estimate: np.ndarray, draws: np.ndarray, counts: dict,
                      reference: dict) -> dict:
        """Method minus a reference method, paired per resample; a contamination difference
        widened to contain Newcombe's interval of the two shares."""
        out = {}
        for k, name in enumerate(self.names):
            boot = percentile_interval(estimate[k], draws[:, k])
            if not higher_is_better(name):
                key = name.removeprefix("contamination@")
                boot = widened(boot, share_difference(
                    share_interval(counts[key]["corrupted"], counts[key]["kept"]),
                    share_interval(reference[key]["corrupted"], reference[key]["kept"])))
            out[name] = boot.as_dict()
        return out

    def by_kind(self, estimate: np.ndarray, draws: np.ndarray, counts: dict) -> dict:
        """Per kind: AUROC clean vs that kind (bootstrap) with its verdict against chance, and
        that kind's share of the kept records (Clopper-Pearson)."""
        first = len(self.names)
        auroc = {kind: percentile_interval(estimate[first + k], draws[:, first + k])
                 for k, kind in enumerate(self.kinds)}
        return {
            "auroc_by_type": {kind: i.as_dict() for kind, i in auroc.items()},
            "verdicts_by_type": {kind: verdict(shifted(i, -0.5)) for kind, i in auroc.items()},
            "contamination_by_type": {
                key: {kind: share_interval(counts[key]["by_kind"][kind],
                                           counts[key]["kept"]).as_dict() for kind in self.kinds}
                for key in self.keys},
        }


# --- over several corruption draws -----------------------------------------------------------

def summary(per_seed: dict[str, dict], budgets: Sequence[str]) -> dict[str, dict]:
    """Per method: one draw's entries as they are; over several draws, Student's t over the
    draws' estimates (and differences), a share's never narrower than the exact interval of
    the draws' pooled counts, the verdicts from those, and per kind the t interval with every
    draw's value (the draws' spread)."""
    runs = list(per_seed.values())
    if len(runs) == 1:
        return {m: {k: v for k, v in entry.items() if k not in ("selected", "kept_corrupted")}
                for m, entry in runs[0]["methods"].items()}
    return {method: _over_draws(method, runs, list(budgets)) for method in runs[0]["methods"]}


def _over_draws(method: str, runs: list[dict], budgets: list[str]) -> dict:
    entries = [r["methods"][method] for r in runs]

    def over(get, low: float = 0.0) -> Interval:
        """Student's t over the draws, cut to [low, 1]."""
        return bounded(t_interval([get(e) for e in entries]), low, 1.0)

    def pooled(key: str, name: str = method) -> tuple[int, int]:
        return (sum(r["methods"][name]["kept_corrupted"][key] for r in runs),
                sum(r["methods"][name]["selected"][key] for r in runs))

    rate = sum(r["corrupted"] for r in runs) / sum(r["records"] for r in runs)
    entry: dict = {name: over(lambda e, n=name: e[n]["estimate"]).as_dict()
                   for name in ("auroc", "auprc") if name in entries[0]}  # none: a selector
    for key in budgets:
        name = f"contamination@{key}"
        entry[name] = widened(over(lambda e, n=name: e[n]["estimate"]),
                              share_interval(*pooled(key))).as_dict()
    for reference in [k for k in entries[0] if k.startswith("vs_")]:
        entry[reference] = {}
        for name in entries[0][reference]:
            spread = over(lambda e, r=reference, n=name: e[r][n]["estimate"], -1.0)
            if not higher_is_better(name):
                key = name.removeprefix("contamination@")
                if reference == "vs_random":
                    exact = shifted(share_interval(*pooled(key)), -rate)
                else:
                    exact = share_difference(share_interval(*pooled(key)),
                                             share_interval(*pooled(key, reference[3:])))
                spread = widened(spread, exact)
            entry[reference][name] = spread.as_dict()
    entry["verdicts"] = verdicts_of(entry)
    entry.update(_kinds_over_draws(entries, budgets))
    return entry


def _kinds_over_draws(entries: list[dict], budgets: list[str]) -> dict:
    """Per kind: Student's t over the draws with every draw's value; a kind's share never
    narrower than the exact interval of its pooled count."""
    kinds = list(entries[0]["contamination_by_type"][budgets[0]]) if budgets else []
    ranked = [kind for kind in kinds if kind in entries[0]["auroc_by_type"]]  # not a selector

    def spread(values: list[float], exact: Interval | None = None) -> dict:
        interval = bounded(t_interval(values), 0.0, 1.0)
        return {**(interval if exact is None else widened(interval, exact)).as_dict(),
                "draws": values}

    def share(key: str, kind: str) -> dict:
        values = [e["contamination_by_type"][key][kind]["estimate"] for e in entries]
        kept = [e["selected"][key] for e in entries]
        found = sum(round(v * k) for v, k in zip(values, kept, strict=True) if k)
        return spread(values, share_interval(found, sum(kept)))

    auroc = {kind: spread([e["auroc_by_type"][kind]["estimate"] for e in entries])
             for kind in ranked}
    return {
        "auroc_by_type": auroc,
        "verdicts_by_type": {kind: verdict(shifted(Interval(a["estimate"], a["low"], a["high"]),
                                                   -0.5)) for kind, a in auroc.items()},
        "contamination_by_type": {key: {kind: share(key, kind) for kind in kinds}
                                  for key in budgets},
    }


def random_over_draws(expectations: list[np.ndarray], draws: list[np.ndarray],
                      names: list[str]) -> dict:
    """Random over one or several corruption draws: the mean of their expectations, and the
    band of the mean of their i-th reselections (the spread of a mean over the draws)."""
    return random_summary(np.mean(expectations, axis=0), np.mean(draws, axis=0), names)


# --- selectors: subsets kept, not rankings ----------------------------------------------------

def selector_metrics(chosen: dict[str, dict[str, np.ndarray]], labels: Sequence[str | None],
                     budgets: Sequence[float], references: dict[str, np.ndarray],
                     resamples: int = RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """Every selector's contamination per budget (`chosen[selector][budget key]`: the records it
    keeps) with its exact interval, its differences to random's expectation and to the
    `REFERENCES` among `references` (their scores), each with a verdict; per kind, that kind's
    share of the kept. Paired on the same bootstrap resamples as `method_metrics` (same `seed`):
    a selector's subset is held fixed (its share on a resample counts a record drawn w times w
    times) while a reference re-selects its top records; the exact intervals (Clopper-Pearson,
    Newcombe) bound every difference from inside. No AUROC or AUPRC: a selector keeps a set at
    each budget, it does not rank the pool."""
    pool = _Pool(np.array([label or "" for label in labels]), list(budgets))
    names = pool.names[2:]  # contamination at each budget
    n = len(pool.labels)
    masks = {m: np.stack([np.isin(np.arange(n), kept[key]) for key in pool.keys]).astype(float)
             for m, kept in chosen.items()}
    rankings = {r: Ranking(references[r]) for r in REFERENCES if r in references}
    own = {m: _fixed_shares(mask, np.ones((1, n)), pool.corrupted)[0]
           for m, mask in masks.items()}
    ref_own = {r: ranking.top_shares(pool.corrupted, pool.budgets, np.ones((1, n)))[0]
               for r, ranking in rankings.items()}
    draws: dict[str, list] = {m: [] for m in [*masks, *rankings, "random"]}
    for weights in resample_weight_blocks(n, resamples, seed):
        for m, mask in masks.items():
            draws[m].append(_fixed_shares(mask, weights, pool.corrupted))
        for r, ranking in rankings.items():
            draws[r].append(ranking.top_shares(pool.corrupted, pool.budgets, weights))
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = (weights * pool.corrupted).sum(axis=1) / weights.sum(axis=1)
        draws["random"].append(np.repeat(rate[:, None], len(names), axis=1))
    stacked = {m: np.concatenate(blocks) for m, blocks in draws.items()}
    rate = float(pool.corrupted.mean())
    ref_counts = {r: pool.kept_counts(references[r]) for r in rankings}
    result = {}
    for m, kept in chosen.items():
        counts = _counts(pool, kept)
        exact = {key: share_interval(counts[key]["corrupted"], counts[key]["kept"])
                 for key in pool.keys}
        entry: dict = {name: exact[key].as_dict() for name, key in zip(names, pool.keys,
                                                                          strict=True)}
        entry["selected"] = {key: counts[key]["kept"] for key in pool.keys}
        entry["kept_corrupted"] = {key: counts[key]["corrupted"] for key in pool.keys}
        entry["vs_random"] = {
            name: widened(percentile_interval(own[m][j] - rate,
                                              stacked[m][:, j] - stacked["random"][:, j]),
                          shifted(exact[key], -rate)).as_dict()
            for j, (name, key) in enumerate(zip(names, pool.keys, strict=True))}
        for r in rankings:
            entry[f"vs_{r}"] = {
                name: widened(percentile_interval(own[m][j] - ref_own[r][j],
                                                  stacked[m][:, j] - stacked[r][:, j]),
                              share_difference(exact[key], share_interval(
                                  ref_counts[r][key]["corrupted"], ref_counts[r][key]["kept"]))
                              ).as_dict()
                for j, (name, key) in enumerate(zip(names, pool.keys, strict=True))}
        entry["verdicts"] = verdicts_of(entry)
        entry["auroc_by_type"], entry["verdicts_by_type"] = {}, {}
        entry["contamination_by_type"] = {
            key: {kind: share_interval(counts[key]["by_kind"][kind],
                                       counts[key]["kept"]).as_dict() for kind in pool.kinds}
            for key in pool.keys}
        result[m] = entry
    return result


def _fixed_shares(mask: np.ndarray, weights: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """[rows, budgets]: the weighted share of `marked` among a fixed subset per budget (`mask`,
    [budgets, n] zeros and ones); NaN where a resample drew none of it."""
    kept = weights @ mask.T
    hits = (weights * marked) @ mask.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(kept > 0, hits / kept, math.nan)


def _counts(pool: _Pool, kept: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per budget: how many a selector keeps, how many of them are corrupted, per kind."""
    out = {}
    for key in pool.keys:
        labels = pool.labels[kept[key]]
        out[key] = {"kept": len(labels), "corrupted": int((labels != "").sum()),
                    "by_kind": {k: int((labels == k).sum()) for k in pool.kinds}}
    return out
