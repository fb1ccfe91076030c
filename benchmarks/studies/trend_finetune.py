"""The trend study's fine-tune verdicts and its pre-registered decision (docs/results.md, "Trend
with pool size"): per pool size, each method's held-out loss of its 10% subset against random's
and IFD's (the area under the held-out curve, issue 37's declared reading; the final loss
beside it), the trend of those differences from the smallest to the largest size, and the
decision rule for the defaults applied at the largest size where both benchmarks are complete.

Every size evaluates the same held-out openings with the same seed values, so a difference
between sizes is paired by seed and by held-out example; random's draws are resampled apart at
each size. Reads `DIR/trend.json` (benchmarks/studies/trend.py) and `DIR/ft<N>/results.json`
with the runs under `DIR/ft<N>/runs/`; writes `DIR/trend-finetune.json`,
`DIR/trend-finetune.md` and `DIR/trend-finetune.png`.

    python benchmarks/studies/trend_finetune.py runs/trend
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from trend import cell, plot_by_size, size_key

from gradfilter.bench.finetune_measures import difference, read
from gradfilter.bench.intervals import bootstrap
from gradfilter.errors import GradfilterError

BUDGET = "0.1"
READINGS = ("auc", "final")
GSNR_UTILITIES = ("snr-member-gated", "snr-member", "gsnr", "gsnr-cv", "drop")
BASELINES = ("ifd", "length", "loss")
GROUPS = ("auroc_shipped", "auroc_study", "auroc_new")
SELECTORS = ("coverage", "s2l")
DEFAULT = "snr-member-gated"


def finished_sizes(directory: Path) -> list[int]:
    return sorted(int(p.name[2:]) for p in directory.glob("ft*")
                  if p.name[2:].isdigit() and (p / "results.json").is_file())


def run_losses(ft_dir: Path, results: dict) -> dict[str, np.ndarray]:
    """row -> [points, draws, seeds, held-out examples] of the runs results.json was made of."""
    seeds = sorted(int(s) for s in results["run_seeds"])
    rows: dict[str, list[np.ndarray]] = {}
    for name in results["curves"]:
        if not name.endswith(f"@{BUDGET}"):
            continue
        row = name.split("@")[0].split("-draw")[0]
        per_seed = [np.array(json.loads(_run_file(ft_dir, name, s).read_text())["eval_loss"])
                    for s in seeds]
        rows.setdefault(row, []).append(np.stack(per_seed, axis=1))  # [points, seeds, examples]
    return {row: np.stack(draws, axis=1) for row, draws in rows.items()}


def _run_file(ft_dir: Path, name: str, seed: int) -> Path:
    found = sorted((ft_dir / "runs").glob(f"{name}-s{seed}-*.json"))
    if len(found) != 1:
        raise GradfilterError(f"{ft_dir / 'runs'}: {len(found)} runs of {name} seed {seed} "
                              f"({[p.name for p in found]}); expected one")
    return found[0]


def trend_of_difference(first: tuple[np.ndarray, np.ndarray], last: tuple[np.ndarray, np.ndarray],
                        seed: int = 0) -> dict:
    """(method - reference at the last size) - (the same at the first size), each side a
    [draws, seeds, examples] reading; seeds and examples resampled jointly across the sizes,
    each row's draws apart."""
    (a1, r1), (a2, r2) = first, last
    if a1.shape[1:] != a2.shape[1:]:
        raise GradfilterError("the sizes' fine-tunes differ in seeds or held-out examples: "
                              f"{a1.shape[1:]} against {a2.shape[1:]}")

    def mean(x: np.ndarray, d: np.ndarray, s: np.ndarray, e: np.ndarray) -> float:
        return float(x[np.ix_(d, s, e)].mean())

    def statistic(d1, dr1, d2, dr2, s, e) -> float:
        return (mean(a2, d2, s, e) - mean(r2, dr2, s, e)) - (mean(a1, d1, s, e)
                                                             - mean(r1, dr1, s, e))

    return bootstrap(statistic, (a1.shape[0], r1.shape[0], a2.shape[0], r2.shape[0],
                                 *a1.shape[1:]), seed=seed).as_dict()


def study(directory: Path) -> dict:
    sizes = finished_sizes(directory)
    if not sizes:
        raise GradfilterError(f"{directory}: no ft<N>/results.json yet")
    results = {n: json.loads((directory / f"ft{n}" / "results.json").read_text()) for n in sizes}
    table = {n: results[n]["results"][BUDGET] for n in sizes}
    methods = list(dict.fromkeys(m for n in sizes for m in table[n]
                                 if m not in ("untrained", "random", "full")))
    out: dict = {"sizes": sizes, "budget": BUDGET, "declared": "auc", "by_size": {}, "trend": {},
                 "schedule": {n: results[n]["schedule"][BUDGET] for n in sizes}}
    for n in sizes:
        out["by_size"][n] = {m: {k: table[n][m].get(k) for k in (
            *READINGS,
            *(f"{r}_vs_{ref}" for r in READINGS for ref in ("random", "ifd", "length")),
            "overfitting")} for m in [*methods, "random", "full", "untrained"] if m in table[n]}
    losses = {n: run_losses(directory / f"ft{n}", results[n]) for n in sizes}
    out["selectors"] = selector_differences(losses)
    if len(sizes) > 1:
        first, last = sizes[0], sizes[-1]
        for m in (m for m in methods if m in losses[first] and m in losses[last]):
            out["trend"][m] = {}
            for ref in ("random", "ifd"):
                if ref == m:
                    continue
                pair = [(read(losses[n][m], "auc"), read(losses[n][ref], "auc"))
                        for n in (first, last)]
                out["trend"][m][f"auc_vs_{ref}"] = trend_of_difference(*pair)
    return out


def selector_differences(losses: dict[int, dict[str, np.ndarray]]) -> dict:
    """size -> selector -> reading_vs_default: issue 34's comparison of the cluster-balanced
    subsets with the default top-k, paired by seed and example (`bench finetune` compares
    every row with random, IFD and `length` itself)."""
    out: dict = {}
    for n, rows in losses.items():
        for s in (s for s in SELECTORS if s in rows and DEFAULT in rows):
            out.setdefault(n, {})[s] = {
                f"{r}_vs_{DEFAULT}": difference(read(rows[s], r), read(rows[DEFAULT], r)).as_dict()
                for r in READINGS}
    return out


def excludes_zero_above(i: dict | None) -> bool:
    return i is not None and i["low"] > 0


def excludes_zero_below(i: dict | None) -> bool:
    return i is not None and i["high"] < 0


def decide(noise: dict, finetune: dict) -> dict:
    """The pre-registered rule (docs/results.md, "Decision rule for the defaults"), applied at
    the largest size where both benchmarks are complete."""
    both = [n for n in finetune["sizes"] if n in noise["sizes"]]
    if not both:
        return {"size": None, "why": "no size has both benchmarks"}
    size = both[-1]
    nm = {m: e["by_size"][size_key(e["by_size"], size)] for m, e in noise["methods"].items()}
    ft = finetune["by_size"][size]

    def worst_group(m: str) -> float:
        return min(nm[m][g]["estimate"] for g in GROUPS)

    reasons: dict[str, list[str]] = {}
    for m in GSNR_UTILITIES:
        why = []
        if m not in ft:
            why.append("no fine-tune run")
        else:
            if excludes_zero_above(ft[m]["auc_vs_random"]):
                why.append("fine-tune worse than random")
            if excludes_zero_above(ft[m]["auc_vs_ifd"]):
                why.append("fine-tune worse than IFD")
            falls = finetune["trend"].get(m, {}).get("auc_vs_random")
            if excludes_zero_above(falls):  # a loss: a rising difference is a falling standing
                why.append("fine-tune standing against random falls with pool size")
        if not excludes_zero_above(nm[m]["vs_random"]["auroc"]):
            why.append("noise AUROC not better than random")
        if excludes_zero_below(nm[m]["vs_ifd"]["auroc"]):
            why.append("noise AUROC worse than IFD")
        noise_trend = noise["methods"][m]["trend"].get("vs_random", {}).get("auroc")
        if excludes_zero_below(noise_trend):
            why.append("noise standing against random falls with pool size")
        reasons[m] = why
    qualified = [m for m, why in reasons.items() if not why]
    decision: dict = {"size": size, "reasons": reasons, "qualified": qualified}
    if qualified:
        decision.update(rule=1, method=max(qualified, key=worst_group))
    else:
        def wins(m: str) -> int:
            return (int(excludes_zero_above(nm[m]["vs_random"]["auroc"]))
                    + int(m in ft and excludes_zero_below(ft[m]["auc_vs_random"])))
        decision.update(rule=2, method=max(BASELINES, key=lambda m: (wins(m), worst_group(m))),
                        baseline_wins={m: wins(m) for m in BASELINES})

    def fine_tune_rank(m: str) -> float:
        return -ft[m]["auc_vs_random"]["estimate"] if m in ft else -np.inf

    decision["gsnr_utility"] = max(GSNR_UTILITIES,
                                   key=lambda m: (worst_group(m), fine_tune_rank(m)))
    decision["worst_group_auroc"] = {m: worst_group(m) for m in (*GSNR_UTILITIES, *BASELINES)}
    return decision


def markdown(result: dict, decision: dict) -> str:
    sizes = result["sizes"]
    head = ["method", *[f"AUC - random @{n}" for n in sizes], *[f"AUC - IFD @{n}" for n in sizes],
            *[f"final - random @{n}" for n in sizes], f"overfitting @{sizes[-1]}"]
    if len(sizes) > 1:
        head.append("trend vs random (AUC)")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for m in dict.fromkeys(m for n in sizes for m in result["by_size"][n]):
        if m == "untrained":
            continue
        e = {n: result["by_size"][n].get(m, {}) for n in sizes}
        row = [m, *[cell(e[n].get("auc_vs_random"), 4) for n in sizes],
               *[cell(e[n].get("auc_vs_ifd"), 4) for n in sizes],
               *[cell(e[n].get("final_vs_random"), 4) for n in sizes],
               _overfits(e[sizes[-1]].get("overfitting"))]
        if len(sizes) > 1:
            row.append(cell(result["trend"].get(m, {}).get("auc_vs_random"), 4))
        lines.append("| " + " | ".join(row) + " |")
    untrained = {n: result["by_size"][n]["untrained"] for n in sizes}
    lines += ["", "Untrained target (step 0), held-out loss: " + ", ".join(
        f"{untrained[n]['auc']['estimate']:.4f} @{n}" for n in sizes) + "."]
    return ("\n".join(lines) + "\n\n" + selector_table(result) + decision_words(decision)
            + "\n")


def selector_table(result: dict) -> str:
    """The cluster-balanced subsets against the default top-k and `length` (empty if none ran)."""
    found = [(n, s, {**result["by_size"][n][s], **e})
             for n, by in result["selectors"].items() for s, e in by.items()]
    if not found:
        return ""
    refs = [f"{r}_vs_{ref}" for ref in (DEFAULT, "length") for r in READINGS]
    lines = ["| selector | size | " + " | ".join(x.replace("_vs_", " - ") for x in refs) + " |",
             "|" + " --- |" * (len(refs) + 2)]
    lines += [f"| {s} | {n} | " + " | ".join(cell(e.get(x), 4) for x in refs) + " |"
              for n, s, e in found]
    return "\n".join(lines) + "\n\n"


def _overfits(o: dict | None) -> str:
    if not o:
        return "-"
    return o["words"] or "no"


def decision_words(d: dict) -> str:
    if d.get("size") is None:
        return "Decision: none (" + d["why"] + ")."
    lines = [f"Decision rule at {d['size']} records (the largest size with both benchmarks):"]
    for m, why in d["reasons"].items():
        lines.append(f"- {m}: " + ("qualifies" if not why else "; ".join(why)))
    if d["rule"] == 1:
        lines.append(f"Rule 1: the default --method stays G-SNR, utility {d['method']}.")
    else:
        wins = ", ".join(f"{m} {k}" for m, k in d["baseline_wins"].items())
        lines.append(f"Rule 2: no G-SNR utility qualifies; the default --method becomes "
                     f"{d['method']} (benchmarks of the two where better than random: {wins}).")
    lines.append(f"Rule 3: the default G-SNR utility is {d['gsnr_utility']} (worst-case AUROC "
                 "over the three groups of kinds: " + ", ".join(
                     f"{m} {v:.3f}" for m, v in d["worst_group_auroc"].items()) + ").")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    sizes = result["sizes"]
    series = {m: [result["by_size"][n][m]["auc_vs_random"] for n in sizes]
              for m in result["by_size"][sizes[0]] if m not in ("untrained", "random")
              and all(m in result["by_size"][n] for n in sizes)}
    plot_by_size(series, sizes, path, "held-out loss (AUC) - random's (lower is better)",
                 "Fine-tune benchmark: each 10% subset against random, by pool size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    result = study(args.directory)
    decision = decide(json.loads((args.directory / "trend.json").read_text()), result)
    result["decision"] = decision
    (args.directory / "trend-finetune.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result, decision)
    (args.directory / "trend-finetune.md").write_text(text)
    plot(result, args.directory / "trend-finetune.png")
    print(text)


if __name__ == "__main__":
    main()
