"""Diversity-aware selection: greedy top-k with near-duplicate suppression by sketch cosine.

Synthetic features with planted near-duplicate groups: random unit vectors in 64 dimensions
have cosines of about N(0, 1/64) (|c| < 0.6 for every pair here), the planted copies have
cosine >= 0.95 with their source, so the threshold 0.9 separates them by a wide margin and
the LSH and the exact greedy must agree.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, write_jsonl

import gradfilter as gf
from gradfilter.diversity import dedup, lsh_bits
from gradfilter.errors import GradfilterError
from gradfilter.selection import select_top
from gradfilter.table import load_sketch_features, sketch_columns

DIM = 64


def planted(n: int, groups: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit rows, `groups * size` of them in groups of near-duplicates (cosine >= 0.95 with
    the group's first row), placed at random positions; and random scores."""
    features, scores, _ = planted_groups(n, groups, size, seed)
    return features, scores


def planted_groups(n: int, groups: int, size: int, seed: int = 0):
    """`planted`, and each row's group (-1: none)."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, DIM))
    for g in range(groups):
        source = rows[g * size]
        for k in range(1, size):
            noise = rng.standard_normal(DIM)
            rows[g * size + k] = source / np.linalg.norm(source) + 0.2 * noise / np.linalg.norm(
                noise)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    group = np.full(n, -1)
    group[:groups * size] = np.repeat(np.arange(groups), size)
    order = rng.permutation(n)
    return rows[order].astype(np.float16), rng.random(n), group[order]


def loader(features: np.ndarray, calls: list | None = None):
    def load(records: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(len(records))
        return features[records]
    return load


def reference_dedup(ranked: np.ndarray, features: np.ndarray, count: int,
                    threshold: float) -> list[int]:
    """The definition, brute force: down the ranking, keep unless similar to a kept one."""
    values = features.astype(np.float32)
    kept: list[int] = []
    for i in ranked:
        if len(kept) == count:
            break
        if kept and (values[kept] @ values[i]).max() >= threshold:
            continue
        kept.append(int(i))
    return kept


@pytest.mark.parametrize("bits", [None, 0])
def test_dedup_equals_the_brute_force_greedy(bits):
    features, scores = planted(3000, groups=30, size=8)
    sims = features.astype(np.float32) @ features.astype(np.float32).T
    np.fill_diagonal(sims, 0)
    assert np.sort(sims.ravel())[-1] > 0.95  # planted pairs
    top = select_top(scores, count=600)
    chosen, report = dedup(top, loader(features), 0.9, bits=bits)
    expected = reference_dedup(top.ranked, features, 600, 0.9)
    assert chosen.indices.tolist() == expected
    assert report.kept == 600 and report.removed > 0
    assert report.bits == (lsh_bits(600) if bits is None else 0)
    assert report.bits > 0 or bits == 0  # the default does use buckets here
    removed = set(top.ranked[:report.processed].tolist()) - set(expected)
    assert report.removed == len(removed)
    # removed records appear in the groups, each with the kept record it duplicates
    for group in report.groups:
        assert group["kept"] in expected
        for r in group["removed"]:
            assert r in removed
            assert features[r].astype(np.float32) @ features[group["kept"]].astype(
                np.float32) >= 0.9


def test_dedup_at_threshold_one_is_plain_top_k():
    features, scores = planted(500, groups=5, size=4)
    top = select_top(scores, ratio=0.2)
    chosen, report = dedup(top, loader(features), 1.0)
    assert chosen.indices.tolist() == top.indices.tolist()
    assert report.removed == 0 and report.groups == []


def test_dedup_reads_more_when_the_pool_runs_out():
    """The 40 best records are one group of near-duplicates: a budget of 20 must read past the
    first pool (30 records) and still keep 20."""
    features, scores, groups = planted_groups(400, groups=1, size=40, seed=1)
    group = np.flatnonzero(groups == 0)
    scores[group] += 10  # the whole group ranks first
    calls: list[int] = []
    chosen, report = dedup(select_top(scores, count=20), loader(features, calls), 0.9)
    assert len(chosen.indices) == 20
    assert report.pool_reads == len(calls) >= 2 and calls[0] == 30
    assert report.removed >= len(group) - 2  # at most a couple of the group are kept
    assert report.groups[0]["removed_count"] == report.removed  # one group in all
    assert set(report.groups[0]["removed"]) <= set(group.tolist())
    expected = reference_dedup(select_top(scores, count=20).ranked, features, 20, 0.9)
    assert chosen.indices.tolist() == expected


def test_dedup_with_every_record_a_copy_keeps_one_and_stops():
    features = np.tile(np.eye(DIM, dtype=np.float16)[:1], (50, 1))
    chosen, report = dedup(select_top(np.arange(50.0), count=5), loader(features), 0.9)
    assert chosen.indices.tolist() == [49]  # nothing else could be kept: fewer than asked
    assert report.removed == 49 and report.groups[0]["removed_count"] == 49
    assert len(report.groups[0]["removed"]) == 20  # record numbers listed, the rest counted


def test_candidate_cap_bounds_the_work_and_is_reported():
    features, scores = planted(3000, groups=0, size=1)
    top = select_top(scores, count=1000)
    _, report = dedup(top, loader(features), 0.9, bits=1, max_candidates=8)
    assert report.capped_lookups > 0
    # per (record, table): at most 8 kept records and 8 earlier records of its block
    assert report.candidates <= report.processed * report.tables * 8 * 2
    assert report.comparisons <= report.candidates


def test_threshold_out_of_range_is_one_line_error():
    features, scores = planted(10, groups=0, size=1)
    with pytest.raises(GradfilterError, match=r"--diversity-threshold must be within"):
        dedup(select_top(scores, count=2), loader(features), 1.5)


def sketch_table(path, units: np.ndarray, scores: np.ndarray, unscored=()) -> None:
    """A G-SNR-like statistics table holding `scores` as gsnr and each record's [members, dim]
    sketches at the late epoch (2), as `score` writes them."""
    n, members, _ = units.shape
    scorable = np.setdiff1d(np.arange(n), np.asarray(unscored, np.int64))
    columns = {"index": pa.array(np.arange(n)), "gsnr": pa.array(np.where(
        np.isin(np.arange(n), scorable), scores, np.nan))}
    for m in range(members):
        for name, column in sketch_columns(units[scorable, m] * 3.0, scorable, n).items():
            columns[f"{name}_e2_m{m}"] = column
    meta = {"method": "gsnr", "early": 1, "late": 2, "members": members}
    table = pa.table(columns).replace_schema_metadata({"gradfilter": json.dumps(meta)})
    pq.write_table(table, path, row_group_size=7)  # several row groups and batches


def test_sketch_features_are_read_for_the_rows_asked_only(tmp_path):
    rng = np.random.default_rng(0)
    units = rng.standard_normal((30, 2, 8))
    units /= np.linalg.norm(units, axis=2, keepdims=True)
    sketch_table(tmp_path / "s.parquet", units, rng.random(30), unscored=[5])
    rows = np.array([29, 3, 5, 14])
    features = load_sketch_features(tmp_path / "s.parquet", rows)
    assert features.shape == (4, 16) and features.dtype == np.float16
    expected = units[rows].reshape(4, 16) / np.sqrt(2)
    expected[2] = 0  # unscored: no sketch
    np.testing.assert_allclose(features.astype(np.float64), expected, atol=1e-3)


def test_select_with_dedup_writes_the_groups_in_the_run_record(tmp_path):
    """Records 2, 7 and 11 share a direction (7, 11, 2 rank highest); dedup keeps 7 and
    removes 11 and 2, listed as one group in the run record."""
    rng = np.random.default_rng(3)
    units = rng.standard_normal((16, 2, 8))
    units[[2, 11]] = units[7] + 0.05 * rng.standard_normal((2, 2, 8))
    units /= np.linalg.norm(units, axis=2, keepdims=True)
    scores = np.linspace(0, 1, 16)
    scores[[7, 11, 2]] = [3.0, 2.5, 2.0]
    sketch_table(tmp_path / "s.parquet", units, scores)
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(16))
    subset = gf.select(data, tmp_path / "s.parquet", tmp_path / "out.jsonl", count=4,
                       diversity="dedup", diversity_threshold=0.9)
    assert subset.indices.tolist() == [7, 15, 14, 13]
    record = json.loads((tmp_path / "out.jsonl.run.json").read_text())
    assert record["diversity"]["method"] == "dedup"
    assert record["diversity"]["groups"] == [{"kept": 7, "removed_count": 2,
                                              "removed": [11, 2]}]  # in rank order
    plain = gf.select(data, tmp_path / "s.parquet", tmp_path / "plain.jsonl", count=4)
    assert plain.indices.tolist() == [7, 11, 2, 15]
    assert json.loads((tmp_path / "plain.jsonl.run.json").read_text())["diversity"] == {
        "method": "none"}


def test_dedup_without_sketches_is_one_line_error(tmp_path):
    pq.write_table(pa.table({"gsnr": np.arange(6, dtype=np.float64)}), tmp_path / "s.parquet")
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(6))
    with pytest.raises(GradfilterError, match=r"no gradient sketches .* --diversity needs them"):
        gf.select(data, tmp_path / "s.parquet", tmp_path / "o.jsonl", count=2,
                  diversity="dedup")


def test_scored_copies_are_removed_by_dedup(tmp_path, gpt2_proxy):
    """Through the real pipeline: three exact copies of record 4 among 12 records have equal
    gradients (cosine 1 up to float32 rounding); dedup over all records keeps one of the four.
    Snapshot mode: every record is measured at the same adapters (with `during`, each copy is
    met at another step, so copies are near, not equal)."""
    records = alpaca_records(12)
    records += [dict(records[4]) for _ in range(3)]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    config = gf.ScoreConfig(proxy=gpt2_proxy, members=2, lora_rank=4, lr=5e-3, batch_size=4,
                            collect_batch_size=4, seed=1, device="cpu", sketch_dim=32,
                            collect="snapshot")
    gf.score(data, tmp_path / "s.parquet", config, progress=False)
    subset = gf.select(data, tmp_path / "s.parquet", tmp_path / "o.jsonl", count=15,
                       diversity="dedup", diversity_threshold=0.99)
    copies = {4, 12, 13, 14}
    assert len(copies & set(subset.indices.tolist())) == 1
    assert len(subset.indices) == 12
    (group,) = subset.diversity["groups"]
    assert {group["kept"], *group["removed"]} == copies
