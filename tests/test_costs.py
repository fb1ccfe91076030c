"""What selecting cost (bench/costs.py): each scoring run's row-tokens from its table and run
record, and the break-even against fine-tuning on the full pool, on hand-made figures."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradfilter.bench.costs import (
    RESPONSE_ONLY,
    WHOLE,
    ScoringWork,
    break_even,
    break_even_text,
    noise_cost,
    pool_cost,
    record_tokens,
    selection_cost,
    table_work,
    work_from,
)

TOKENS = np.array([10, 20, 30, 40])
RESPONSE = np.array([2, 3, 4, 5])


def _work(method: str) -> ScoringWork:
    return ScoringWork("t.parquet", "p", 0, 2, "during", True, None, method)


def test_each_baseline_costs_its_forward_passes():
    assert selection_cost(_work("ifd"), TOKENS, RESPONSE)["forward_row_tokens"] == 100 + 14 + 4
    for method in ("perplexity-low", "perplexity-high", "loss"):
        cost = selection_cost(_work(method), TOKENS, RESPONSE)
        assert (cost["forward_row_tokens"], cost["forward_backward_row_tokens"]) == (100, 0)
        assert not cost["free"]
    for method in ("length", "random"):
        cost = selection_cost(_work(method), TOKENS, RESPONSE)
        assert cost["free"] and cost["forward_row_tokens"] == 0
        assert cost["forward_backward_row_tokens"] == 0
        assert "members" not in cost  # the ensemble's settings are G-SNR's only


def test_break_even_in_figures_and_words():
    assert break_even(100, 50, 200) == {"share_of_full_pool": 0.75, "pays_at_equal_cost": True,
                                        "break_even_ratio": pytest.approx(100 / 150)}
    assert break_even(300, 50, 200)["pays_at_equal_cost"] is False
    assert break_even(300, 50, 200)["break_even_ratio"] == 2.0
    assert break_even(None, 50, 200)["pays_at_equal_cost"] is None
    assert "pays for itself even where" in break_even_text(100, 50, 200, None)
    words = break_even_text(300, 50, 200, 135_000_000)
    assert "350 row-tokens, 175.0% of one epoch on the full pool (200)" in words
    assert "exceeds 2 times the proxy's" in words
    assert "135M parameters, so about a 270M-parameter target" in words
    assert "parameter count is not recorded" in break_even_text(300, 50, 200, None)
    assert "selecting saves nothing" in break_even_text(10, 200, 200, None)
    assert "not known" in break_even_text(None, 50, 200, None)


def test_work_from_reads_the_metadata_and_the_run_record():
    assert work_from({}, None, "t") is None  # not a table `score` wrote
    assert work_from({"method": "gsnr", "config": {}}, None, "t") is None  # no members
    meta = {"method": "gsnr", "config": {"proxy": "p", "members": 3, "epochs": 4,
                                         "collect": "snapshot", "ifd_pass": False}}
    record = {"wall_seconds": {"a": 1.5, "b": 2.25, "note": "x"}, "dtype": "torch.bfloat16",
              "device": {"device": "cuda", "gpu": "NVIDIA H100"}, "proxy_parameters": 1234}
    work = work_from(meta, record, "t")
    assert work == ScoringWork("t", "p", 3, 4, "snapshot", False, 3.75, "gsnr",
                               "NVIDIA H100, torch.bfloat16", 1234)
    unrecorded = work_from(meta, None, "t")
    assert unrecorded.wall_seconds is None and unrecorded.device is None
    cost = selection_cost(work, TOKENS, RESPONSE)
    assert cost["forward_backward_row_tokens"] == (3 * 4 + 3 * 2) * 100  # snapshot's passes
    assert cost["forward_row_tokens"] == 0  # no IFD pass


def test_a_table_without_whole_counts_is_counted_in_response_tokens(tmp_path):
    head = {"n_response_tokens": pa.array(RESPONSE.astype(np.int32)),
            "skip_reason": pa.array([None, "bad", None, None], pa.string())}
    old = tmp_path / "old.parquet"
    scores = {"ifd": pa.array([0.5, np.nan, 0.2, 0.9])}
    pq.write_table(pa.table({**head, **scores}).replace_schema_metadata({"gradfilter": json.dumps(
        {"method": "ifd", "config": {"proxy": "p"}})}), old)
    tokens, response, scored, whole = record_tokens(old)
    assert not whole and tokens.tolist() == response.tolist() == RESPONSE.tolist()
    assert scored.tolist() == [True, False, True, True]
    new = pa.table({**head, "n_tokens": pa.array(TOKENS.astype(np.int32))})
    tokens, _, _, whole = record_tokens(new)
    assert whole and tokens.tolist() == TOKENS.tolist()
    work = table_work(old)  # no run record beside it
    assert work.method == "ifd" and work.wall_seconds is None
    kept = np.array([True, True, False, False])  # record 1 is unscored: not in the subset
    cost = pool_cost(work, response, response, scored, kept, whole=False)
    assert cost["tokens"] == RESPONSE_ONLY
    assert cost["full_pool_row_tokens"] == 2 + 4 + 5 and cost["full_pool_records"] == 3
    assert (cost["kept_records"], cost["kept_row_tokens"]) == (1, 2)
    assert cost["selection_row_tokens"] == 11 + 11 + 3  # T + R + N, all in response tokens
    assert cost["share_of_full_pool"] == pytest.approx((25 + 2) / 11)


def test_noise_cost_charges_each_method_its_run():
    runs = {"gsnr": selection_cost(ScoringWork("g", "p", 2, 2, "during", True, 5.0), TOKENS,
                                   RESPONSE),
            "length": selection_cost(_work("length"), TOKENS, RESPONSE), "ifd": None}
    served = {"gsnr": "gsnr", "coverage": "gsnr", "length": "length", "ifd": "ifd"}
    kept = {m: {"0.5": np.array([0, 3])} for m in (*served, "balanced_random")}
    cost = noise_cost(runs, served, kept, TOKENS, whole=True)
    assert cost["tokens"] == WHOLE and cost["full_pool_row_tokens"] == 100
    gsnr = 4 * 100 + (100 + 14 + 4)
    for method in ("gsnr", "coverage"):
        entry = cost["methods"][method]
        assert entry["selection_row_tokens"] == gsnr and entry["wall_seconds"] == 5.0
        assert entry["budgets"]["0.5"] == {
            "records": 2, "row_tokens": 50, "share_of_full_pool": (gsnr + 50) / 100,
            "pays_at_equal_cost": False, "break_even_ratio": gsnr / 50}
    assert cost["methods"]["length"]["selection_row_tokens"] == 0
    assert cost["methods"]["balanced_random"]["run"] is None  # no run: free
    assert cost["methods"]["balanced_random"]["selection_row_tokens"] == 0
    assert cost["methods"]["ifd"]["selection_row_tokens"] is None  # its table does not say
