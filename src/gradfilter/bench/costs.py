"""Is selecting worth it? (issue 34; Yin & Rush, arXiv 2410.16208: gradient selection pays only
where the trained model is much larger than the selector.) The fine-tune benchmark states what
the selection cost beside what fine-tuning costs, in row-tokens (one token of one sequence
through the model once; a forward and backward pass counts once, as forward+backward):

- **the selection**: the G-SNR run that scored the pool: each of its M members trains E epochs
  over every scored record, forward+backward, M * E * T for T the scored records' tokens; with
  `--collect snapshot` also M * 2 * T for the separate gradient passes at epochs s and t
  (`during`, the default, collects inside the training passes: nothing more); its IFD pass, where
  it ran, forward only: T + R, R the response tokens plus one start token per record (the
  response scored alone). Wall time: the table's run record's, every stage summed.
- **fine-tuning on a subset**: the benchmark's run on it, `steps * batch` rows of the subset
  (its passes) at the subset's mean tokens, forward+backward; its wall time per seed.
- **fine-tuning on the full pool for the same epochs**: `--epochs` passes over every
  selectable record (not run: the benchmark's full-pool row has the budget's steps).

The selection pays for itself in compute at a budget where selection + subset < full pool. The
row-tokens are counted with the benchmark's tokenizer (the target's); where the target is not
the proxy, the proxy's own count differs by the two tokenizers' ratio, and a proxy token is
cheaper than a target token by the models' sizes: the block says both models. No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..table import stats_meta

COLLECTED_EPOCHS = 2  # epochs s and t


@dataclass(frozen=True)
class ScoringWork:
    """How the G-SNR run that scored the pool was made, from its table and run record."""

    table: str
    proxy: str | None
    members: int
    epochs: int
    collect: str
    ifd_pass: bool
    wall_seconds: float | None


def scoring_work(table: str | Path | None) -> ScoringWork | None:
    """The G-SNR run behind `table` (None where there is no table, or it is not G-SNR's)."""
    if table is None:
        return None
    meta = stats_meta(table)
    config = meta.get("config") or {}
    if meta.get("method", "gsnr") != "gsnr" or "members" not in config:
        return None
    wall = None
    record = Path(f"{table}.run.json")
    if record.is_file():
        try:
            timings = json.loads(record.read_text(encoding="utf-8")).get("wall_seconds") or {}
            wall = float(sum(v for v in timings.values() if isinstance(v, int | float)))
        except (OSError, ValueError):
            wall = None
    return ScoringWork(str(table), config.get("proxy"), int(config["members"]),
                       int(config.get("epochs", 2)), str(config.get("collect", "during")),
                       bool(config.get("ifd_pass", True)), wall)


def selection_cost(work: ScoringWork, tokens: np.ndarray, response: np.ndarray) -> dict:
    """The G-SNR run's row-tokens over the scored records' `tokens` (and `response` tokens)."""
    total = int(np.sum(tokens))
    passes = work.members * work.epochs
    if work.collect == "snapshot":
        passes += work.members * COLLECTED_EPOCHS
    ifd = total + int(np.sum(response)) + len(response)
    return {"table": work.table, "proxy": work.proxy, "members": work.members,
            "epochs": work.epochs, "collect": work.collect, "ifd_pass": work.ifd_pass,
            "scored_records": len(tokens), "scored_tokens": total,
            "forward_backward_row_tokens": passes * total,
            "forward_row_tokens": ifd if work.ifd_pass else 0, "ifd_forward_row_tokens": ifd,
            "wall_seconds": work.wall_seconds}


def selection_row_tokens(method: str, selection: dict | None) -> int | None:
    """What choosing `method`'s subset cost the proxy, all passes together: the G-SNR run for a
    G-SNR utility, coverage and s2l; the forward pass of IFD for ifd, perplexity and RDS+ (whose
    one more forward, over the target examples, is not counted); nothing for length, random and
    balanced_random (None where the G-SNR run is not known)."""
    from ..utilities import PERPLEXITY, RDS_SCORES, UTILITIES
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
