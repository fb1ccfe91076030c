"""benchmarks/studies/utility_study.py --consensus: each record's late-epoch gradient sketch against
the sum of every other scored record's, member by member, on tables made by hand."""

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "studies"))

from utility_study import consensus

from gradfilter.table import sketch_columns


def sketch_table(gradients: np.ndarray, unscored=()) -> pa.Table:
    """[records, members, dim] late-epoch (2) sketches as `score` stores them."""
    n, members, _ = gradients.shape
    scorable = np.setdiff1d(np.arange(n), np.asarray(unscored, np.int64))
    columns = {"skip_reason": pa.array([("empty" if i in unscored else None) for i in range(n)],
                                       pa.string())}
    for m in range(members):
        for name, column in sketch_columns(gradients[scorable, m], scorable, n).items():
            columns[f"{name}_e2_m{m}"] = column
    meta = {"method": "gsnr", "early": 1, "late": 2}
    return pa.table(columns).replace_schema_metadata({"gradfilter": json.dumps(meta)})


def test_one_member_by_hand():
    # records 0 and 1 pull along x (1 twice as hard as 0), record 2 along y, 3 is unscored
    table = sketch_table(np.array([[[1.0, 0.0]], [[2.0, 0.0]], [[0.0, 1.0]], [[5.0, 5.0]]]),
                         unscored=[3])
    # the others of 0: (2, 1); of 1: (1, 1); of 2: (3, 0)
    np.testing.assert_allclose(consensus(table), [2 / np.sqrt(5), 1 / np.sqrt(2), 0.0, np.nan],
                               atol=1e-3)
    # unit pulls: the others of 0 and of 1: (1, 1); of 2: (2, 0)
    np.testing.assert_allclose(consensus(table, weighted=False),
                               [1 / np.sqrt(2), 1 / np.sqrt(2), 0.0, np.nan], atol=1e-3)


def test_members_are_averaged_each_in_its_own_coordinates():
    rng = np.random.default_rng(0)
    gradients = rng.standard_normal((9, 3, 16))
    together = consensus(sketch_table(gradients))
    apart = [consensus(sketch_table(gradients[:, [m]])) for m in range(3)]
    np.testing.assert_allclose(together, np.mean(apart, axis=0), atol=1e-3)  # float16
    flipped = gradients.copy()
    flipped[4] *= -1  # a record pulling against the others scores as far below as it was above
    assert consensus(sketch_table(flipped))[4] == pytest.approx(-together[4], abs=2e-3)
