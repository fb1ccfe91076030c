"""Is selecting worth it? (issue 34; Yin & Rush, arXiv 2410.16208: gradient selection pays only
where the trained model is much larger than the selector.) The benchmarks and the selection page
state what the selection cost beside what fine-tuning costs, in row-tokens (one token of one
sequence through the model once; a forward and backward pass counts once, as forward+backward):

- **a scoring run** (`selection_cost`, from its table's metadata and run record; T the scored
  records' tokens, R their response tokens, N their number): G-SNR, each of its M members
  trains E epochs over every scored record, forward+backward, M * E * T; with `--collect
  snapshot` also M * 2 * T for the separate gradient passes at epochs s and t (`during`, the
  default, collects inside the training passes: nothing more); its IFD pass, where it ran,
  forward only: T + R + N (the response scored alone after one start token). A baseline: `ifd`
  T + R + N forward, `perplexity-*` and `loss` T forward, `length` and `random` nothing (free).
  With `--target-examples` (U their tokens, the table's `target.tokens`): G-SNR's target pass
  after epochs s and t, M * 2 * U forward+backward; IFD's RDS+, one forward over them, U (a
  table written before `target.tokens` was stored: not counted).
  Wall time, device and the proxy's parameter count: the run record's, every stage summed.
- **fine-tuning on a subset**: in `bench finetune`, the benchmark's run on it, `steps * batch`
  rows of the subset at the subset's mean tokens, forward+backward, and its wall time per seed;
  in `bench noise` and on the selection page, one epoch over the subset: its records' tokens.
- **fine-tuning on the full pool**: `--epochs` passes (one, in `bench noise` and on the page)
  over every selectable record (not run).

The selection pays for itself in compute where selection + subset < full pool (`break_even`),
every row-token counted alike: a forward row-token counts as a whole one (it costs about a
third of a forward+backward), so the selection's side is overstated, never understated. A proxy
token is cheaper than a target token by about the models' sizes: the selection pays for a target
whose cost per token times its epochs exceeds `selection / (full - subset)` times the proxy's
(the break-even ratio; the run record names the proxy's parameters).

Tokens: `bench finetune` counts with its tokenizer (the target's; where the target is not the
proxy, the proxy's own count differs by the two tokenizers' ratio); `bench noise` and the page
read the tables' `n_tokens` (the proxy's tokens, after truncation). A table written before
`n_tokens` was stored holds each record's response tokens only (`n_response_tokens`): every
figure then counts response tokens (`RESPONSE_ONLY`), smaller than the truth, and the
break-even holds where the kept records' prompts weigh, beside their responses, as the pool's
do. No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..outputs import run_record_path
from ..table import load_stats, stats_meta, table_column_names
from ..utilities import PERPLEXITY

COLLECTED_EPOCHS = 2  # epochs s and t
FREE = ("length", "random")  # scored by no model pass
FORWARD_ONLY = ("ifd", *PERPLEXITY, "loss")  # scored by forward passes of the proxy
WHOLE = ("the tokens the proxy read (n_tokens: prompt and response after truncation to "
         "max_length, counted with the proxy's tokenizer)")
RESPONSE_ONLY = ("response tokens only: the table has no n_tokens column (written before "
                 "gradfilter stored each record's whole token count), so prompts are left out "
                 "of every figure and each is smaller than the true row-tokens; the break-even "
                 "holds where the kept records' prompts weigh, beside their responses, as the "
                 "pool's do")


@dataclass(frozen=True)
class ScoringWork:
    """How a scoring run was made, from its table's metadata and its run record."""

    table: str
    proxy: str | None
    members: int
    epochs: int
    collect: str
    ifd_pass: bool
    wall_seconds: float | None
    method: str = "gsnr"
    device: str | None = None  # None: no run record, or it names none
    proxy_parameters: int | None = None
    target_tokens: int = 0  # the target examples' tokens (--target-examples), where recorded


def scoring_work(table: str | Path | None) -> ScoringWork | None:
    """The G-SNR run behind `table` (None where there is no table, or it is not G-SNR's)."""
    work = None if table is None else table_work(table)
    return work if work is not None and work.method == "gsnr" else None


def table_work(table: str | Path) -> ScoringWork | None:
    """The scoring run behind any statistics table, with its run record where there is one."""
    return work_from(stats_meta(table), read_run_record(table), str(table))


def read_run_record(table: str | Path) -> dict | None:
    """The run record beside a table (None where there is none, or it is not a JSON object)."""
    try:
        record = json.loads(run_record_path(Path(table)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def work_from(meta: dict, record: dict | None, table: str) -> ScoringWork | None:
    """The run a table's `meta` and run `record` describe (None where the metadata does not say
    which method scored it: a table not written by `score`)."""
    config = meta.get("config") or {}
    method = str(meta.get("method", "gsnr"))
    if not meta or (method == "gsnr" and "members" not in config) or method not in (
            "gsnr", *FORWARD_ONLY, *FREE):
        return None
    record = record or {}
    timings = record.get("wall_seconds")
    wall = (float(sum(v for v in timings.values() if isinstance(v, int | float)))
            if isinstance(timings, dict) else None)
    device = record.get("device")
    if isinstance(device, dict):
        device = device.get("gpu") or device.get("device")
    if device and record.get("dtype"):
        device = f"{device}, {record['dtype']}"
    parameters = record.get("proxy_parameters")
    target = (meta.get("target") or {}).get("tokens", 0)
    return ScoringWork(table, config.get("proxy"), int(config.get("members", 0)),
                       int(config.get("epochs", 2)), str(config.get("collect", "during")),
                       bool(config.get("ifd_pass", True)), wall, method,
                       str(device) if device else None,
                       int(parameters) if isinstance(parameters, int) else None,
                       int(target) if isinstance(target, int) else 0)


def selection_cost(work: ScoringWork, tokens: np.ndarray, response: np.ndarray) -> dict:
    """The run's row-tokens over the scored records' `tokens` (and `response` tokens)."""
    total = int(np.sum(tokens))
    ifd = total + int(np.sum(response)) + len(response)
    backward, forward = 0, 0
    if work.method == "gsnr":
        passes = work.members * work.epochs
        if work.collect == "snapshot":
            passes += work.members * COLLECTED_EPOCHS
        backward, forward = passes * total, ifd if work.ifd_pass else 0
        backward += work.members * COLLECTED_EPOCHS * work.target_tokens  # the target pass
    elif work.method in FORWARD_ONLY:
        forward = ifd + work.target_tokens if work.method == "ifd" else total  # (RDS+)
    ensemble = ({"members": work.members, "epochs": work.epochs, "collect": work.collect,
                 "ifd_pass": work.ifd_pass, "ifd_forward_row_tokens": ifd}
                if work.method == "gsnr" else {})
    return {"table": work.table, "method": work.method, "proxy": work.proxy,
            "proxy_parameters": work.proxy_parameters, **ensemble,
            "scored_records": len(tokens), "scored_tokens": total,
            "forward_backward_row_tokens": backward, "forward_row_tokens": forward,
            "free": work.method in FREE, "wall_seconds": work.wall_seconds,
            "device": work.device}


def record_tokens(table: str | Path | pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Per record of a table: the tokens counted (`n_tokens`, else its response tokens), the
    response tokens, whether it was scored; and whether the first are whole counts."""
    names = table_column_names(table)
    wanted = [c for c in ("n_tokens", "n_response_tokens", "skip_reason") if c in names]
    columns = table.select(wanted) if isinstance(table, pa.Table) else load_stats(table, wanted)

    def counts(name: str) -> np.ndarray:
        if name not in wanted:
            return np.zeros(columns.num_rows, dtype=np.int64)
        return np.asarray(columns[name].to_numpy(zero_copy_only=False), dtype=np.int64)

    scored = (np.asarray(columns["skip_reason"].is_null().to_numpy(zero_copy_only=False), bool)
              if "skip_reason" in wanted else np.ones(columns.num_rows, dtype=bool))
    response = counts("n_response_tokens")
    whole = "n_tokens" in wanted
    return (counts("n_tokens") if whole else response), response, scored, whole


def break_even(selection: int | None, subset: int, full: int) -> dict:
    """The selection and one epoch on its subset against one epoch on the full pool, in
    row-tokens counted alike: their share of the full pool's, whether it is below one, and the
    break-even ratio selection / (full - subset) (None where unknown, or nothing is saved)."""
    if selection is None:
        return {"share_of_full_pool": None, "pays_at_equal_cost": None,
                "break_even_ratio": None}
    saved = full - subset
    return {"share_of_full_pool": (selection + subset) / full if full > 0 else None,
            "pays_at_equal_cost": selection + subset < full,
            "break_even_ratio": selection / saved if saved > 0 else None}


def break_even_text(selection: int | None, subset: int, full: int,
                    parameters: int | None) -> str:
    """`break_even` in words, with the proxy's size where recorded."""
    found = break_even(selection, subset, full)
    if selection is None:
        return "The selection's cost is not known, so neither is whether it paid for itself."
    spent = (f"Selection ({selection:,}) + one epoch on the subset ({subset:,}) = "
             f"{selection + subset:,} row-tokens, {found['share_of_full_pool']:.1%} of one "
             f"epoch on the full pool ({full:,})" if full > 0 else
             "The full pool has no tokens")
    ratio = found["break_even_ratio"]
    if found["pays_at_equal_cost"]:
        return spent + ": selecting pays for itself even where a target token costs no more "\
                       "than a proxy token."
    if ratio is None:
        return spent + ": the subset costs as much as the full pool; selecting saves nothing."
    size = (f"the proxy has {_size(parameters)} parameters, so about a "
            f"{_size(ratio * parameters)}-parameter target for one epoch" if parameters else
            "the proxy's parameter count is not recorded")
    return (spent + f": at equal cost per token it does not pay. It pays where the target's "
            f"cost per token times its epochs exceeds {ratio:.3g} times the proxy's ({size}).")


def pool_cost(work: ScoringWork | None, tokens: np.ndarray, response: np.ndarray,
              scored: np.ndarray, kept: np.ndarray, whole: bool) -> dict:
    """The selection page's cost, per record `tokens`, `response` tokens and masks `scored` and
    `kept` (within the scored): scoring the table (None where its metadata does not say how),
    one epoch over the full pool (the scored records) and over the kept subset, the break-even."""
    scoring = None if work is None else selection_cost(work, tokens[scored], response[scored])
    chose = None if scoring is None else (scoring["forward_backward_row_tokens"]
                                          + scoring["forward_row_tokens"])
    full, subset = int(tokens[scored].sum()), int(tokens[kept & scored].sum())
    return {"tokens": WHOLE if whole else RESPONSE_ONLY, "scoring": scoring,
            "selection_row_tokens": chose, "full_pool_records": int(scored.sum()),
            "full_pool_row_tokens": full, "kept_records": int((kept & scored).sum()),
            "kept_row_tokens": subset, **break_even(chose, subset, full)}


def noise_cost(runs: dict[str, dict | None], served_by: dict[str, str],
               kept: dict[str, dict[str, np.ndarray]], tokens: np.ndarray, whole: bool) -> dict:
    """One corruption draw's `cost` in bench noise: each scoring run's (`selection_cost`, None
    where its table does not say how it was scored), and per method the run that chose it (none
    for balanced_random: free), with per budget its subset's epoch (`kept`: positions among the
    scored records, whose `tokens` these are) against the full pool's, and the break-even."""
    full = int(tokens.sum())
    methods = {}
    for method, subsets in kept.items():
        run = served_by.get(method)
        cost = None if run is None else runs.get(run)
        chose = (0 if run is None else None if cost is None else
                 cost["forward_backward_row_tokens"] + cost["forward_row_tokens"])
        budgets = {}
        for key, chosen in subsets.items():
            spent = int(tokens[chosen].sum())
            budgets[key] = {"records": len(chosen), "row_tokens": spent,
                            **break_even(chose, spent, full)}
        methods[method] = {"run": run, "selection_row_tokens": chose,
                           "wall_seconds": None if cost is None else cost["wall_seconds"],
                           "budgets": budgets}
    return {"tokens": WHOLE if whole else RESPONSE_ONLY, "full_pool_records": len(tokens),
            "full_pool_row_tokens": full, "runs": runs, "methods": methods}


def _size(count: float) -> str:
    """A parameter count as people write it: 135M, 1.35B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:.3g}"


def selection_row_tokens(method: str, selection: dict | None) -> int | None:
    """What choosing `method`'s subset cost the proxy, all passes together: the G-SNR run for a
    G-SNR utility, coverage and s2l; the forward pass of IFD for ifd, perplexity and RDS+ (whose
    one more forward, over the target examples, is not counted); nothing for length, random and
    balanced_random (None where the G-SNR run is not known)."""
    from ..utilities import RDS_SCORES, UTILITIES
    from .selectors import CLUSTERED

    if method in (*UTILITIES, *CLUSTERED):
        if selection is None:
            return None
        return selection["forward_backward_row_tokens"] + selection["forward_row_tokens"]
    if method in ("ifd", *PERPLEXITY, *RDS_SCORES):
        return None if selection is None else selection["ifd_forward_row_tokens"]
    return 0


@dataclass(frozen=True)
class Trained:
    """One row's fine-tunes at a budget: subset size, its mean tokens, passes, seconds."""

    records: int
    mean_tokens: float
    passes: float
    seconds_per_seed: float


def finetune_cost(rows: dict[str, Trained], selection: dict | None, full_pool: float) -> dict:
    """One budget: each row's fine-tune (row-tokens, wall seconds per seed), with its selection
    (`selection_row_tokens`) as a share of the full pool's fine-tune at the same epochs
    (`full_pool` row-tokens, not run)."""
    out = {}
    for name, trained in rows.items():
        spent = round(trained.passes * trained.records * trained.mean_tokens)
        chose = selection_row_tokens(name, selection)
        out[name] = {"forward_backward_row_tokens": spent,
                     "wall_seconds_per_seed": trained.seconds_per_seed,
                     "selection_row_tokens": chose,
                     "with_selection_over_full_pool":
                         None if chose is None else (chose + spent) / max(full_pool, 1)}
    return {"subsets": out, "full_pool_same_epochs_row_tokens": round(full_pool)}


def cost_block(work: ScoringWork | None, tokens: np.ndarray, response: np.ndarray,
               budgets: dict[str, dict[str, Trained]], full_pool: float, target: str) -> dict:
    """results.json's `cost`: the selection over the scored records' `tokens` and `response`
    tokens (None without a G-SNR table among the inputs), and each budget's fine-tunes."""
    selection = None if work is None else selection_cost(work, tokens, response)
    return {"target": target, "tokens": "counted with the target's tokenizer",
            "selection": selection,
            "budgets": {b: finetune_cost(rows, selection, full_pool) for b, rows in
                        budgets.items()}}


def cost_markdown(cost: dict | None, rows: Sequence[str] = ()) -> list[str]:
    """The cost section of results.md: the selection, then per budget each subset's fine-tune
    and the full pool's at the same epochs (`rows`: which subsets, default all)."""
    if not cost:
        return []
    lines = ["## Is selecting worth it? (row-tokens: one token through the model once)", ""]
    selection = cost["selection"]
    if selection is None:
        lines += ["No G-SNR table among the inputs: the selection's cost is not known.", ""]
    else:
        wall = selection["wall_seconds"]
        lines += [f"Selection: the G-SNR run ({selection['members']} members x "
                  f"{selection['epochs']} epochs over {selection['scored_records']} records, "
                  f"collect {selection['collect']}, proxy {selection['proxy']}): "
                  f"{selection['forward_backward_row_tokens']:,} forward+backward and "
                  f"{selection['forward_row_tokens']:,} forward row-tokens"
                  + (f", {wall:.0f} s" if wall is not None else "") + f". Target "
                  f"{cost['target']}; tokens counted with its tokenizer.", ""]
    for budget, block in cost["budgets"].items():
        full = block["full_pool_same_epochs_row_tokens"]
        lines += [f"Budget {float(budget):.0%}: the full pool for the same epochs would cost "
                  f"{full:,} forward+backward row-tokens of the target.", "",
                  "| subset | selection row-tokens | fine-tune row-tokens | s per seed | "
                  "selection + fine-tune, share of the full pool's |",
                  "| --- | --- | --- | --- | --- |"]
        for name, row in block["subsets"].items():
            if rows and name not in rows:
                continue
            share, chose = row["with_selection_over_full_pool"], row["selection_row_tokens"]
            lines.append(f"| {name} | {'-' if chose is None else f'{chose:,}'} | "
                         f"{row['forward_backward_row_tokens']:,} | "
                         f"{row['wall_seconds_per_seed']:.1f} | "
                         f"{'-' if share is None else f'{share:.1%}'} |")
        lines.append("")
    return lines
