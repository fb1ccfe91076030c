"""Utilities of method.md §4: pure array formulas over the statistics (see `table`).

    G_i^(e) = mean_m n_i^(m,e)                      ensemble gradient magnitude
    D_i     = (G_i^(s) - G_i^(t)) / (G_i^(s) + eps)  relative drop
    V_i     = var_m n_i^(m,t)                        late-stage variance (population, ddof=0)

Where every member's late norm is zero, V_i / G_i^(t)^2 is taken as 0 (it is 0/0 otherwise).
Unscored examples (NaN statistics) get NaN utilities and are never selected.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12
UTILITIES = ("gsnr", "gsnr-cv", "drop", "gradnorm", "uncertainty")
BASELINE_SCORES = ("ifd", "perplexity", "length", "random")  # columns of baseline tables


def compute_utilities(
    early: np.ndarray, late: np.ndarray, eps: float = EPS
) -> dict[str, np.ndarray]:
    """All utilities from [examples, members] squared norms at epochs s and t."""
    magnitude_early = early.mean(axis=1)
    magnitude_late = late.mean(axis=1)
    drop = (magnitude_early - magnitude_late) / (magnitude_early + eps)
    variance = late.var(axis=1)
    # All member norms zero means zero variance too: define V/G^2 = 0 there, not 0/0.
    zero = magnitude_late == 0
    relative_variance = np.where(zero, 0.0, variance / np.where(zero, 1.0, magnitude_late) ** 2)
    return {
        "gsnr": drop / (variance + eps),
        "gsnr-cv": drop / (relative_variance + eps),
        "drop": drop,
        "gradnorm": magnitude_late,
        "uncertainty": variance,
    }
