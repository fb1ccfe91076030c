"""Why each record was kept or dropped: the traceable side of a selection (`--annotate`,
`--rejected`). No torch, no model: the selection, the scores and the statistics table's own
columns (`skip_reason`, `ifd_ratio`) say it all.

Every record gets `selected`, `rank` (its place in the ranking of the records with a finite
score, 1 the best; None without one), `score` (None where not finite) and a `reason`:

- `selected`: kept (its score is at or above the cut score);
- `below the cut`: scored, ranked below the last record kept;
- `near-duplicate of a kept record (--diversity dedup)`: ranked above the cut but dropped by dedup;
- `not taken in its stratum (--stratify)`: ranked above the cut, but its stratum's share was
  taken by records better in it (or drawn, --within random);
- `gated out: IFD ratio >= 1 ...`: a gated utility (or the ifd baseline) gives no score to a
  record whose answer is no easier with its prompt than without it;
- `unscorable: <the table's skip_reason>`: too long under --truncation drop, an empty answer, no
  assistant turn, an unreadable record...;
- `no finite score`: anything else without one (a statistic that came out NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from .selection import Selection

SELECTED = "selected"
BELOW_CUT = "below the cut"
DEDUP_REMOVED = "near-duplicate of a kept record (--diversity dedup)"
NOT_IN_STRATUM = "not taken in its stratum (--stratify)"
GATED = ("gated out: IFD ratio >= 1 (the answer is no easier to predict with its prompt than "
         "without it)")
UNSCORABLE = "unscorable: {}"
NO_SCORE = "no finite score"
ANNOTATION_KEY = "gradfilter"  # where --annotate puts a record's decision


@dataclass(frozen=True)
class Decisions:
    """Every record's decision; `kept` in output order is the selection's business."""

    selected: np.ndarray  # bool [records]
    rank: np.ndarray  # int [records]: 1-based place among finite scores, 0 where none
    scores: np.ndarray  # float [records]
    reasons: list[str]
    utility: str

    def entry(self, index: int) -> dict:
        """One record's decision as it is written (`--annotate`)."""
        score = float(self.scores[index])
        return {"index": index, "selected": bool(self.selected[index]),
                "rank": int(self.rank[index]) or None,
                "score": score if np.isfinite(score) else None,
                "utility": self.utility, "reason": self.reasons[index]}

    def counts(self) -> dict[str, int]:
        """Records per reason (the run record's summary)."""
        found: dict[str, int] = {}
        for reason in self.reasons:
            found[reason] = found.get(reason, 0) + 1
        return found


def decide(selection: Selection, ranked_before_dedup: np.ndarray, scores: np.ndarray,
           utility: str, skip_reasons: list[str | None] | None,
           ifd_ratio: np.ndarray | None) -> Decisions:
    """Each record's decision from the selection made (after dedup, where it ran), the
    ranking before dedup, and the table's skip reasons and IFD ratios (None: not in it)."""
    n = len(scores)
    selected = np.zeros(n, dtype=bool)
    selected[selection.indices] = True
    rank = np.zeros(n, dtype=np.int64)
    rank[ranked_before_dedup] = np.arange(1, len(ranked_before_dedup) + 1)
    last_kept = int(rank[selection.indices].max()) if len(selection.indices) else 0
    gates = utility.endswith("-gated") or utility == "ifd"
    # Records ranked above the last kept and not kept: dedup dropped them, or (a selection
    # that is not a top-k prefix: a stratified one; dedup is refused with it) their stratum.
    above = DEDUP_REMOVED if selection.chosen is None else NOT_IN_STRATUM
    reasons = []
    for i in range(n):
        if selected[i]:
            reasons.append(SELECTED)
        elif rank[i]:
            reasons.append(above if rank[i] < last_kept else BELOW_CUT)
        elif skip_reasons is not None and skip_reasons[i]:
            reasons.append(UNSCORABLE.format(skip_reasons[i]))
        elif gates and ifd_ratio is not None and np.isfinite(ifd_ratio[i]) and ifd_ratio[i] >= 1:
            reasons.append(GATED)
        else:
            reasons.append(NO_SCORE)
    return Decisions(selected, rank, np.asarray(scores, dtype=np.float64), reasons, utility)


def table_columns(stats: object) -> tuple[list[str | None] | None, np.ndarray | None]:
    """The table's skip reasons and IFD ratios, where `stats` is a table (a path or in
    memory) that has them."""
    from .table import IFD_RATIO, load_stats

    if isinstance(stats, np.ndarray) or stats is None:
        return None, None
    if isinstance(stats, pa.Table):
        table = stats
    else:
        from .table import open_table

        names = open_table(Path(stats)).schema_arrow.names
        table = load_stats(stats, [c for c in ("skip_reason", IFD_RATIO) if c in names])
    reasons = (table.column("skip_reason").to_pylist() if "skip_reason" in table.column_names
               else None)
    ifd = None
    if IFD_RATIO in table.column_names:
        ifd = np.asarray(table.column(IFD_RATIO).to_numpy(), dtype=np.float64)
    return reasons, ifd
