"""results.md of the noise benchmark: the headline table with each method's verdicts against
random, IFD and `length`; the differences with their intervals; per corruption kind. A
selector (coverage, s2l, balanced_random) keeps a subset and ranks nothing: `-` for its AUROC
and AUPRC."""

from __future__ import annotations

from collections.abc import Sequence

from .intervals import UNDECIDED, VERDICTS
from .noise_metrics import REFERENCES

SHOWN = {"random": "random", "ifd": "IFD", "length": "length"}


def results_markdown(results: dict) -> str:
    """The human-readable report of a `bench noise` results dict."""
    budgets = results["budgets"]
    seeds = results["corrupt_seeds"]
    references = ["random", *REFERENCES]
    head = ["method", "AUROC", "AUPRC", *[f"contam. @{float(b):.0%}" for b in budgets],
            *[f"vs {SHOWN[r]}" for r in references]]
    lines = [f"# Noise benchmark: {results['data']}", "", _scale_line(results), "",
             _reading(results), "", _row(head), _row(["---"] * len(head)),
             _random_row(results["random"], budgets, len(references))]
    for method, m in results["summary"].items():
        lines.append(_row([method, _cell(m.get("auroc")), _cell(m.get("auprc")),
                           *[_cell(m[f"contamination@{b}"]) for b in budgets],
                           *[verdict_cell(m["verdicts"].get(r)) for r in references]]))
    lines += _differences(results["summary"], budgets, references)
    lines += _kinds(results, budgets)
    first = results["seeds"][str(seeds[0])]
    if "diversity" in first:
        lines += diversity_markdown(first["diversity"], budgets, seeds[0])
    lines += cost_markdown(first.get("cost"), seeds[0], results.get("config", {}).get("proxy"))
    return "\n".join(lines) + "\n"


def _reading(results: dict) -> str:
    seeds = results["corrupt_seeds"]
    spread = ("a paired bootstrap over the records (every resample re-selects each method's "
              "kept records)" if len(seeds) == 1 else
              f"Student's t over {len(seeds)} corruption seeds (cut to the measure's range)")
    return (
        "AUROC: clean records scored above corrupted ones (0.5 is chance). AUPRC: corrupted "
        "records found at the bottom of the ranking. Contamination: share of corrupted records "
        "among those kept at each budget (lower is better). Brackets: 95% intervals, " + spread +
        "; a share's interval is never narrower than its exact (Clopper-Pearson) one, so a "
        "subset with no corrupted record is not a certainty. Random is its expectation on these "
        "records (AUROC 0.5; AUPRC the mean average precision of a random order; contamination "
        "the corruption rate), in parentheses the 2.5-97.5% band of "
        f"{results['random']['reselections']['draws']} random orders of them. "
        "vs random / IFD / length: on each measure, **better**, **tied** or **worse** by whether "
        "the 95% interval of the difference (method minus random's expectation, or minus the "
        "other method, paired) excludes zero; the cells name the measures (5%, 10%: "
        "contamination at that budget)." + (
            " Selectors (coverage, s2l, balanced_random) keep a subset at each budget and rank "
            "nothing (no AUROC or AUPRC); the bootstrap holds their subsets fixed."
            if any("auroc" not in m for m in results["summary"].values()) else ""))


def _random_row(random: dict, budgets: Sequence[str], references: int) -> str:
    expectation, bands = random["expectation"], random["reselections"]

    def cell(name: str) -> str:
        band = bands[name]
        return f"{expectation[name]:.3f} ({band['low']:.3f}-{band['high']:.3f})"

    return _row(["random, expected (draws)", cell("auroc"), cell("auprc"),
                 *[cell(f"contamination@{b}") for b in budgets], *["-"] * references])


def verdict_cell(verdicts: dict[str, str] | None) -> str:
    """The measures grouped by verdict: `worse: AUROC, AUPRC; tied: 5%, 10%`."""
    if verdicts is None:
        return "-"
    groups = []
    for word in (*VERDICTS, UNDECIDED):
        named = [_short(measure) for measure, v in verdicts.items() if v == word]
        if named:
            groups.append(f"{word}: {', '.join(named)}")
    return "; ".join(groups)


def _short(measure: str) -> str:
    if measure.startswith("contamination@"):
        return f"{float(measure.removeprefix('contamination@')):.0%}"
    return measure.upper()


def _differences(summary: dict, budgets: Sequence[str], references: list[str]) -> list[str]:
    """Every difference behind the verdicts, with its interval and verdict."""
    names = ["auroc", "auprc", *[f"contamination@{b}" for b in budgets]]
    head = ["method", "minus", *[_short(n) for n in names]]
    lines = ["", "## Differences behind the verdicts", "",
             "Method minus random's expectation, IFD or length (higher AUROC and AUPRC, lower "
             "contamination are better), with 95% intervals and the verdict.", "",
             _row(head), _row(["---"] * len(head))]
    for method, m in summary.items():
        for reference in references:
            differences = m.get(f"vs_{reference}")
            if differences is None:
                continue
            lines.append(_row([method, SHOWN[reference], *[
                f"{_signed(differences[n])} {m['verdicts'][reference][n]}"
                if n in differences else "-" for n in names]]))
    return lines


def _kinds(results: dict, budgets: Sequence[str]) -> list[str]:
    """Per kind: AUROC clean vs that kind with its verdict against chance, and that kind's share
    of the kept records at the middle budget; with several draws, each draw's value."""
    first = next(iter(results["summary"].values()))
    kinds = [k for k in results["corruptions"]
             if k in first["auroc_by_type"] or k in first["contamination_by_type"][budgets[0]]]
    middle = budgets[len(budgets) // 2]
    seeds = results["corrupt_seeds"]
    several = len(seeds) > 1
    lines = ["", f"## By corruption kind (AUROC clean vs that kind, with its verdict against "
                 f"chance; share of that kind among the kept at {float(middle):.0%})", "",
             "Brackets: 95% intervals, " +
             (f"Student's t over the {len(seeds)} draws (cut to [0, 1]), then each draw's "
              f"value (seeds "
              f"{', '.join(map(str, seeds))})." if several else
              "a bootstrap over the records (AUROC), Clopper-Pearson (share)."), "",
             _row(["method", *kinds]), _row(["---"] * (len(kinds) + 1))]
    for method, m in results["summary"].items():
        cells = []
        for kind in kinds:
            auroc = m["auroc_by_type"].get(kind)  # none for a selector
            share = m["contamination_by_type"][middle][kind]
            text = ("-" if auroc is None else f"{_cell(auroc)} {m['verdicts_by_type'][kind]}"
                    f"{_draws(auroc) if several else ''}") + \
                f" · {_cell(share)}{_draws(share) if several else ''}"
            cells.append(text)
        lines.append(_row([method, *cells]))
    return lines


def _draws(entry: dict) -> str:
    return " (" + ", ".join(f"{v:.3f}" for v in entry["draws"]) + ")"


def diversity_markdown(diversity: dict, budgets: Sequence[str], seed: int) -> list[str]:
    """Plain top-k against dedup, per method and budget, the difference with its interval."""
    lines = ["", f"## Diversity: dedup at cosine >= {diversity['threshold']:g} (seed {seed})",
             "", "Contamination of plain top-k and of the same utility with near-duplicates "
             "removed; the difference (dedup - plain) with its 95% bootstrap interval over "
             "records (selections held fixed); records removed.", "",
             _row(["method", "budget", "plain", "dedup", "difference [95% CI]", "removed"]),
             _row(["---"] * 6)]
    for method, m in diversity["methods"].items():
        for b in budgets:
            lines.append(_row([method, b, f"{m['plain'][b]:.3f}", f"{m['dedup'][b]:.3f}",
                               _signed(m["difference"][b]), str(m["removed"][b])]))
    return lines


def _scale_line(results: dict) -> str:
    parts = []
    for seed in results["corrupt_seeds"]:
        r = results["seeds"][str(seed)]
        kinds = ", ".join(f"{k} {n}" for k, n in r["corrupted_by_type"].items())
        origin = (f"labelled by {results['labels_file']}" if results.get("labels_file")
                  else f"seed {seed}")
        parts.append(f"{origin}: {r['records']} scored records ({r['unscorable']} more "
                     f"could not be scored and are left out), {r['corrupted']} corrupted "
                     f"({kinds})")
    return "; ".join(parts) + "."


def _cell(interval: dict | None) -> str:
    if interval is None:
        return "-"
    return f"{interval['estimate']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def _signed(interval: dict) -> str:
    return f"{interval['estimate']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}]"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"



COST_NOTE = ("Row-tokens: one token of one sequence through a model once, a forward and backward "
             "pass counted once. Scoring: G-SNR trains every member over every scored record each "
             "epoch (forward+backward) and runs its IFD pass (forward); IFD runs two forward "
             "passes, perplexity and loss one; length, random and balanced_random run no model "
             "(free); coverage and s2l cost the G-SNR run whose table they cluster. Fine-tuning: "
             "one epoch over the subset against one over the full pool (the scored records). The "
             "last columns count every row-token alike (a forward one as a whole one: the "
             "selection's side is overstated): selection + subset as a share of the full pool's "
             "epoch, and the break-even ratio selection / (full - subset), the factor by which the "
             "target's cost per token times its epochs must exceed the proxy's for selecting to "
             "pay (docs/method.md).")


def cost_runs(cost: dict) -> list[list[str]]:
    """Each scoring run: its table, row-tokens, wall time, device and the proxy's size."""
    rows = []
    for run, c in cost["runs"].items():
        if c is None:
            rows.append([run, "not recorded (the table's metadata does not say how it was "
                              "scored)", "-", "-", "-", "-"])
            continue
        rows.append([run, "free" if c["free"] else f"{c['forward_backward_row_tokens']:,}",
                     "free" if c["free"] else f"{c['forward_row_tokens']:,}",
                     "not recorded" if c["wall_seconds"] is None else f"{c['wall_seconds']:.1f}",
                     c["device"] or "not recorded",
                     "-" if c["free"] else "not recorded" if c["proxy_parameters"] is None
                     else f"{c['proxy_parameters']:,}"])
    return rows


def cost_rows(cost: dict) -> list[list[str]]:
    """Per method and budget: what chose it, the subset's epoch, the share and break-even."""
    rows = []
    for method, m in cost["methods"].items():
        chose = m["selection_row_tokens"]
        for budget, b in m["budgets"].items():
            share, ratio = b["share_of_full_pool"], b["break_even_ratio"]
            rows.append([method, f"{float(budget):.0%}", m["run"] or "no run (free)",
                         "not known" if chose is None else f"{chose:,}",
                         f"{b['records']:,}", f"{b['row_tokens']:,}",
                         "-" if share is None else f"{share:.1%}",
                         "-" if b["pays_at_equal_cost"] is None else
                         "yes" if b["pays_at_equal_cost"] else "no",
                         "-" if ratio is None or b["pays_at_equal_cost"] else f"{ratio:.3g}"])
    return rows


COST_RUNS_HEAD = ["scoring run", "forward+backward row-tokens", "forward row-tokens",
                  "wall s", "device", "proxy parameters"]
COST_HEAD = ["method", "budget", "chosen by", "selection row-tokens", "subset records",
             "subset epoch row-tokens", "selection + subset, share of the full pool's epoch",
             "pays at equal cost per token", "break-even ratio"]


def cost_markdown(cost: dict | None, seed: int, proxy: str | None) -> list[str]:
    """results.md's "Is selecting worth it?": the scoring runs, then each method's subsets
    against one epoch on the full pool."""
    if not cost:
        return []
    return ["", f"## Is selecting worth it? (seed {seed}; row-tokens)", "", COST_NOTE, "",
            f"Tokens: {cost['tokens']}; proxy {proxy}. One epoch on the full pool "
            f"({cost['full_pool_records']:,} scored records): "
            f"{cost['full_pool_row_tokens']:,} forward+backward row-tokens.", "",
            _row(COST_RUNS_HEAD), _row(["---"] * len(COST_RUNS_HEAD)),
            *[_row(r) for r in cost_runs(cost)], "",
            _row(COST_HEAD), _row(["---"] * len(COST_HEAD)), *[_row(r) for r in cost_rows(cost)]]
