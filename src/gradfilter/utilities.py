"""Utilities of method.md §4: pure array formulas over a G-SNR table's raw statistics.

Per record i, member m, collected epoch e (s early, t late): n = squared LoRA-gradient norm,
g = sqrt(n) its norm, L = the record's loss. Means, variances (population, ddof=0) and standard
deviations are over the members:

    G^(e) = mean_m n^(m,e)          D = (G^(s) - G^(t)) / (G^(s) + eps)     V = var_m n^(m,t)

Where every member's late norm is zero, ratios of the form V / G^2 are taken as 0 (0/0
otherwise). Unscored records (NaN statistics) get NaN utilities and are never selected.
The gated hybrids (`<utility>-gated`) keep a utility's score where the proxy's own IFD ratio,
measured before training, is below 1 (the records Superfiltering would keep), NaN (never
selected) elsewhere. With target examples (`score --target-examples`), c^(m,e) is the cosine
between the record's gradient sketch and the mean target gradient's, member m, epoch e (0
where either is zero); `align` is its mean over members and both epochs, `align-snr` the
members' mean over their spread, `align-max` the mean of the largest cosine with any one
target example. Every formula is written out in docs/method.md; higher is kept first
(`loss` is minus the loss: the lowest loss first). The baselines' directions: DIRECTIONS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

EPS = 1e-12


@dataclass(frozen=True)
class RawStats:
    """A G-SNR table's statistics for some records: [records, members] at epochs s and t."""

    sqnorm_early: np.ndarray
    sqnorm_late: np.ndarray
    loss_early: np.ndarray | None = None
    loss_late: np.ndarray | None = None
    ifd_ratio: np.ndarray | None = None  # [records, 1]: PPL(y|x) / PPL(y) before training
    # with target examples: cosines with the mean target gradient, [records, members] at s
    # and t, and the largest cosine with any one target example
    align_early: np.ndarray | None = None
    align_late: np.ndarray | None = None
    align_max_early: np.ndarray | None = None
    align_max_late: np.ndarray | None = None


@dataclass(frozen=True)
class Utility:
    formula: Callable[[RawStats], np.ndarray]
    needs_loss: bool = False
    needs_ifd: bool = False
    needs_target: bool = False


def _relative(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (where it is, so is the
    numerator in every use below)."""
    zero = denominator == 0
    return np.where(zero, 0.0, numerator / np.where(zero, 1.0, denominator))


def _drop(early: np.ndarray, late: np.ndarray) -> np.ndarray:
    magnitude_early = early.mean(axis=1)
    return (magnitude_early - late.mean(axis=1)) / (magnitude_early + EPS)


def _gsnr(s: RawStats) -> np.ndarray:
    return _drop(s.sqnorm_early, s.sqnorm_late) / (s.sqnorm_late.var(axis=1) + EPS)


def _gsnr_cv(s: RawStats) -> np.ndarray:
    late = s.sqnorm_late
    return _drop(s.sqnorm_early, late) / (_relative(late.var(axis=1), late.mean(axis=1) ** 2)
                                          + EPS)


def _snr_drop(s: RawStats) -> np.ndarray:
    """The drop in squared norm over the late spread, both in squared-norm units."""
    gap = s.sqnorm_early.mean(axis=1) - s.sqnorm_late.mean(axis=1)
    return gap / (s.sqnorm_late.std(axis=1) + EPS)


def _snr_member(s: RawStats) -> np.ndarray:
    """Each member's own relative drop; their mean over their standard deviation."""
    drops = (s.sqnorm_early - s.sqnorm_late) / (s.sqnorm_early + EPS)
    return drops.mean(axis=1) / (drops.std(axis=1) + EPS)


def _gsnr_norm(s: RawStats) -> np.ndarray:
    """gsnr-cv with unsquared norms and a standard deviation: the relative drop of the norm
    over the late norms' coefficient of variation."""
    early, late = np.sqrt(s.sqnorm_early), np.sqrt(s.sqnorm_late)
    return _drop(early, late) / (_relative(late.std(axis=1), late.mean(axis=1)) + EPS)


def _loss(s: RawStats) -> np.ndarray:
    assert s.loss_late is not None
    return -s.loss_late.mean(axis=1)


def _loss_drop(s: RawStats) -> np.ndarray:
    assert s.loss_early is not None and s.loss_late is not None
    return _drop(s.loss_early, s.loss_late)


def _member_alignment(s: RawStats) -> np.ndarray:
    """[records, members]: each member's cosine with the target direction, mean over the
    two collected epochs (LESS sums over checkpoints weighted by the learning rate; the
    weights are equal here)."""
    assert s.align_early is not None and s.align_late is not None
    return (s.align_early + s.align_late) / 2


def _align_snr(s: RawStats) -> np.ndarray:
    """Aligned and agreed on: the members' mean alignment over its spread across members."""
    alignment = _member_alignment(s)
    return alignment.mean(axis=1) / (alignment.std(axis=1) + EPS)


def _align_max(s: RawStats) -> np.ndarray:
    assert s.align_max_early is not None and s.align_max_late is not None
    return ((s.align_max_early + s.align_max_late) / 2).mean(axis=1)


def _gated(base: Utility) -> Utility:
    """`base` among the records whose IFD ratio is below 1; NaN (never selected) elsewhere."""
    def formula(s: RawStats) -> np.ndarray:
        assert s.ifd_ratio is not None
        return np.where(s.ifd_ratio[:, 0] < 1, base.formula(s), np.nan)

    return Utility(formula, needs_loss=base.needs_loss, needs_ifd=True)


FORMULAS: dict[str, Utility] = {
    "gsnr": Utility(_gsnr),
    "gsnr-cv": Utility(_gsnr_cv),
    "drop": Utility(lambda s: _drop(s.sqnorm_early, s.sqnorm_late)),
    "gradnorm": Utility(lambda s: s.sqnorm_late.mean(axis=1)),
    "uncertainty": Utility(lambda s: s.sqnorm_late.var(axis=1)),
    "snr-drop": Utility(_snr_drop),
    "snr-member": Utility(_snr_member),
    "gsnr-norm": Utility(_gsnr_norm),
    "loss": Utility(_loss, needs_loss=True),
    "loss-drop": Utility(_loss_drop, needs_loss=True),
    "align": Utility(lambda s: _member_alignment(s).mean(axis=1), needs_target=True),
    "align-snr": Utility(_align_snr, needs_target=True),
    "align-max": Utility(_align_max, needs_target=True),
}
GATED = ("gsnr", "gsnr-cv", "snr-drop", "snr-member", "gsnr-norm", "loss", "loss-drop")
FORMULAS.update({f"{name}-gated": _gated(FORMULAS[name]) for name in GATED})
UTILITIES = tuple(FORMULAS)
# The utilities of a table scored with target examples (`score --target-examples`) only.
TARGET_UTILITIES = tuple(name for name, utility in FORMULAS.items() if utility.needs_target)
# What `select` ranks a G-SNR table by unless told: chosen by the study of docs/results.md
# (the best worst case over two datasets and two groups of corruption kinds); its ungated
# form where a table has no IFD ratios (scored with --no-ifd-pass).
DEFAULT_UTILITY = "snr-member-gated"
DEFAULT_UNGATED = "snr-member"
# What `select` ranks a table scored with target examples by unless told: LESS's reading, the
# one with published evidence (docs/method.md §4); align-snr and align-max are offered beside.
TARGET_UTILITY = "align"
# The baselines `select` and the benchmarks rank by, each read from a baseline table's column
# (ifd, length, random: their own; both perplexity directions: `perplexity`). The direction of
# each is part of its name or stated in DIRECTIONS (--help, the table's metadata, method.md).
PERPLEXITY = ("perplexity-low", "perplexity-high", "perplexity")
BASELINE_SCORES = ("ifd", *PERPLEXITY, "length", "random")
# RDS+ (docs/method.md §6): stored by an IFD table scored with target examples
# (`score --method ifd --target-examples`), what such a table ranks by unless told.
RDS_SCORES = ("rds", "rds-mean")
RANKINGS = (*UTILITIES, *BASELINE_SCORES, *RDS_SCORES)  # what `select --utility` may name
DIRECTIONS = {
    "ifd": "highest IFD ratio first, among the records whose ratio is below 1, as Superfiltering",
    "perplexity-low": "lowest perplexity first, a quality filter",
    "perplexity-high": "highest perplexity first, hard examples",
    "perplexity": "another name for perplexity-high",
    "loss": "lowest loss first",
    "length": "longest response first",
    "random": "a seeded uniform draw",
    "rds": "RDS+'s round robin: each target example in turn takes the record most similar to it "
           "(cosine of position-weighted mean hidden states) not taken yet",
    "rds-mean": "highest mean cosine with the target examples first (RDS+'s representations)",
}
# (stored column, sign): a baseline ranked by a stored column the other way round
_READ_AS = {"perplexity-low": ("perplexity", -1.0), "perplexity-high": ("perplexity", 1.0)}


def stored_score(name: str) -> tuple[str, float]:
    """The table column a score is read from (utilities: `gsnr-cv` from `gsnr_cv`) and the sign
    that makes higher kept first."""
    return _READ_AS.get(name, (name.replace("-", "_"), 1.0))


def superfiltering_score(ifd_ratio: np.ndarray) -> np.ndarray:
    """How Superfiltering ranks records by their IFD ratio: highest first among those below 1;
    NaN (never selected) at 1 or above, where the prompt does not help the answer."""
    return np.where(ifd_ratio < 1, ifd_ratio, np.nan)


def compute_utilities(early: np.ndarray, late: np.ndarray, loss_early: np.ndarray | None = None,
                      loss_late: np.ndarray | None = None,
                      names: tuple[str, ...] = UTILITIES,
                      ifd_ratio: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The utilities `names` from [records, members] squared norms (and losses) at epochs s and
    t (and the [records] IFD ratios); those that need what is not given are left out."""
    return stats_utilities(RawStats(early, late, loss_early, loss_late,
                                    None if ifd_ratio is None else np.reshape(ifd_ratio, (-1, 1))),
                           names)


def stats_utilities(stats: RawStats, names: tuple[str, ...] = UTILITIES
                    ) -> dict[str, np.ndarray]:
    """The utilities `names` that `stats` hold enough for."""
    has_target = stats.align_late is not None and stats.align_max_late is not None
    with np.errstate(divide="ignore", invalid="ignore"):
        return {name: FORMULAS[name].formula(stats) for name in names
                if computable(name, stats.loss_late is not None, stats.ifd_ratio is not None,
                              has_target)}


def computable(name: str, has_loss: bool, has_ifd: bool, has_target: bool = False) -> bool:
    """Whether utility `name` can be computed from what a table holds."""
    utility = FORMULAS[name]
    return ((has_loss or not utility.needs_loss) and (has_ifd or not utility.needs_ifd)
            and (has_target or not utility.needs_target))
