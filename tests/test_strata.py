"""Stratified and cluster-balanced selection, and --threshold, on hand-made tables (no model):
clusters recovered where the features separate them, each choice of features, the two
allocation rules, determinism under the seed, copies kept to their cluster's share, the named
selectors the benchmarks call, and the command line end to end with its refusals."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, write_jsonl

import gradfilter as gf
from gradfilter.clusters import MAX_K, cluster_records, default_k
from gradfilter.selection import cut_score, select_top
from gradfilter.strata import (
    allocate,
    balanced_random,
    coverage,
    field_labels,
    length_labels,
    s2l,
    stratified_choice,
)
from gradfilter.table import sketch_columns

META = {"method": "gsnr", "early": 1, "late": 2, "members": 2}


def trajectory_table(loss_group: np.ndarray, norm_group: np.ndarray,
                     sketch_group: np.ndarray | None = None, seed: int = 0,
                     noise: float = 0.05) -> pa.Table:
    """A G-SNR table of 2 members at epochs 1 and 2 whose losses are 1 + 3 x loss_group and
    log norms 2 x norm_group (plus small noise), with 16-number sketches pointing one of two
    ways by sketch_group (random ways where none is given)."""
    rng = np.random.default_rng(seed)
    n = len(loss_group)
    columns = {"index": pa.array(np.arange(n)),
               "n_response_tokens": pa.array(np.arange(n) % 50 + 1, type=pa.int32()),
               "skip_reason": pa.array([None] * n, type=pa.string())}
    for epoch in (1, 2):
        for m in range(2):
            columns[f"loss_e{epoch}_m{m}"] = pa.array(
                1 + 3.0 * loss_group / epoch + rng.normal(0, noise, n))
            columns[f"sqnorm_e{epoch}_m{m}"] = pa.array(
                np.exp(2.0 * norm_group + rng.normal(0, noise, n)) / epoch)
    directions = rng.standard_normal((2, 16))
    for epoch in (1, 2):
        for m in range(2):
            if sketch_group is None:
                sketches = rng.standard_normal((n, 16))
            else:
                sketches = directions[sketch_group] + rng.normal(0, noise, (n, 16))
            for name, column in sketch_columns(sketches.astype(np.float32), np.arange(n),
                                               n).items():
                columns[f"{name}_e{epoch}_m{m}"] = column
    return gf.with_utilities(pa.table(columns).replace_schema_metadata(
        {"gradfilter": json.dumps(META)}))


def same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    """Whether `labels` groups the records exactly as `truth` does (numbering aside)."""
    pairs = set(zip(labels.tolist(), truth.tolist(), strict=True))
    return len(pairs) == len(set(labels.tolist())) == len(set(truth.tolist()))


# --- clusters ----------------------------------------------------------------------------------

def test_each_choice_of_features_recovers_the_groups_it_can_see():
    """Three crossed factors, 15 records each combination: the losses alone see one, the
    trajectory (losses and norms) two, trajectory+sketch all three."""
    combos = np.array([(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    factors = np.repeat(combos, 15, axis=0)
    table = trajectory_table(factors[:, 0], factors[:, 1], factors[:, 2])
    loss = cluster_records(table, k=2, budget=10, features="loss")
    assert same_partition(loss.labels, factors[:, 0])
    assert loss.columns == ["loss_e1_m0", "loss_e1_m1", "loss_e2_m0", "loss_e2_m1"]
    trajectory = cluster_records(table, k=4, budget=10, features="trajectory")
    assert same_partition(trajectory.labels, factors[:, 0] * 2 + factors[:, 1])
    assert len(trajectory.columns) == 8
    both = cluster_records(table, k=8, budget=10, features="trajectory+sketch")
    assert same_partition(both.labels, factors @ [4, 2, 1])
    assert not same_partition(cluster_records(table, k=8, budget=10).labels, factors @ [4, 2, 1])


def test_clusters_are_numbered_by_first_record_and_unscored_records_get_none():
    groups = np.array([2, 0, 1] * 10)
    table = trajectory_table(groups, groups)
    for name in ("loss_e1_m0", "sqnorm_e2_m1"):
        values = table.column(name).to_numpy().copy()
        values[[3, 7]] = np.nan
        table = table.set_column(table.column_names.index(name), name, pa.array(values))
    clustering = cluster_records(table, k=3, budget=5)
    assert clustering.labels[:3].tolist() == [0, 1, 2]
    assert clustering.labels[3] == clustering.labels[7] == -1
    assert clustering.clustered == 28 and clustering.sizes == [9, 9, 10]


def test_the_rule_for_k():
    assert default_k(60, 12) == round(math.sqrt(30)) == 5
    assert default_k(1_000_000, 100_000) == MAX_K
    assert default_k(500, 3) == 3  # at most the budget
    assert default_k(4, 100) == 2  # at least 2
    assert default_k(1, 1) == 1  # at most the records
    table = trajectory_table(np.arange(200) % 4, np.arange(200) % 2)
    clustering = cluster_records(table, budget=20)
    assert clustering.k == 10 and clustering.k_rule.startswith("min(100, max(2, round(")


def test_clusters_are_deterministic_under_the_seed():
    rng = np.random.default_rng(3)
    table = trajectory_table(rng.normal(size=300), rng.normal(size=300), seed=3, noise=0.5)
    first = cluster_records(table, k=6, budget=30, seed=4).labels
    np.testing.assert_array_equal(cluster_records(table, k=6, budget=30, seed=4).labels, first)
    assert not np.array_equal(cluster_records(table, k=6, budget=30, seed=5).labels, first)
    chosen = s2l(table, count=30, k=6, seed=4)
    np.testing.assert_array_equal(s2l(table, count=30, k=6, seed=4), chosen)
    assert not np.array_equal(s2l(table, count=30, k=6, seed=9), chosen)
    np.testing.assert_array_equal(coverage(table, count=30, k=6, seed=4),
                                  coverage(table, count=30, k=6, seed=4))


def test_minibatch_kmeans_above_its_size(monkeypatch):
    from gradfilter import clusters

    monkeypatch.setattr(clusters, "MINIBATCH_ABOVE", 50)
    groups = np.arange(120) % 3
    clustering = cluster_records(trajectory_table(groups, groups), k=3, budget=10)
    assert clustering.algorithm.startswith("MiniBatchKMeans")
    assert same_partition(clustering.labels, groups)


# --- allocation ------------------------------------------------------------------------------

def test_even_allocation_takes_small_strata_whole_and_shares_the_rest_evenly():
    assert allocate(np.ones(4), [2, 3, 50, 40], 25).tolist() == [2, 3, 10, 10]
    # 2 is under 30/4; then 9 is under 28/3; 19 left for two: 9.5 each, the odd one to the
    # larger stratum
    assert allocate(np.ones(4), [2, 9, 50, 40], 30).tolist() == [2, 9, 10, 9]
    assert allocate(np.ones(3), [4, 5, 6], 100).tolist() == [4, 5, 6]  # all, fewer than asked
    assert allocate(np.ones(3), [0, 5, 6], 4).tolist() == [0, 2, 2]


def test_proportional_allocation_keeps_the_pools_shares():
    sizes = np.array([100, 50, 30, 20])
    assert allocate(sizes, sizes, 40).tolist() == [20, 10, 6, 4]
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 60, rng.integers(1, 12))
        total = int(rng.integers(0, sizes.sum() + 1))
        counts = allocate(sizes, sizes, total)
        assert counts.sum() == total and (counts <= sizes).all()
        assert (np.abs(counts - total * sizes / max(sizes.sum(), 1)) < 1).all()


def test_stratified_choice_takes_the_best_within_each_stratum():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3)
    scores = np.concatenate([np.arange(10.0) + 100, np.arange(10.0), np.arange(3.0) + 50])
    picked = stratified_choice(scores, labels, 9, allocation="even", within="utility")
    assert picked.taken.tolist() == [3, 3, 3]
    assert sorted(picked.chosen.tolist()) == [7, 8, 9, 17, 18, 19, 20, 21, 22]
    assert picked.chosen.tolist() == [9, 8, 7, 22, 21, 20, 19, 18, 17]  # by score
    # the threshold leaves stratum 1 with 5 records: stratum 2 is taken whole (3 <= 12 / 3),
    # 9 left for two is 4.5 each, the odd one to the larger stratum
    picked = stratified_choice(scores, labels, 12, allocation="even", within="utility",
                               threshold=5.0)
    assert picked.sizes.tolist() == [10, 10, 3] and picked.capacities.tolist() == [10, 5, 3]
    assert picked.taken.tolist() == [5, 4, 3]
    assert (scores[picked.chosen] >= 5.0).all()
    drawn = stratified_choice(scores, labels, 9, allocation="proportional", within="random",
                              seed=1)
    assert np.bincount(labels[drawn.chosen]).tolist() == [4, 4, 1]


def test_a_record_copied_many_times_keeps_at_most_its_clusters_share():
    """Top-k fills the budget with the copies (they score best); coverage keeps at most the
    share of the copies' cluster."""
    rng = np.random.default_rng(1)
    groups = np.concatenate([np.repeat([0, 1, 2], 30), np.full(40, 5)])  # 40 copies of one
    table = trajectory_table(groups, groups % 2, seed=1)
    copies = np.flatnonzero(groups == 5)
    utility = np.concatenate([rng.uniform(0, 1, 90), np.full(40, 9.0)])
    table = table.set_column(table.column_names.index("drop"), "drop", pa.array(utility))
    assert np.isin(select_top(utility, count=24).indices, copies).all()
    chosen = coverage(table, count=24, k=4, utility="drop")
    assert np.isin(chosen, copies).sum() == 6  # 24 / 4
    subset_strata = gf.strata.choose(utility, table, count=24, stratify="clusters:4")[1]
    taken = [s["taken"] for s in subset_strata["strata"]]
    assert taken == [6, 6, 6, 6]


def test_balanced_random_is_even_over_the_sources_and_skips_unscored_records():
    n = 40
    sources = ["a"] * 30 + ["b"] * 6 + ["c"] * 4
    table = pa.table({"index": np.arange(n),
                      "skip_reason": ["too long" if i in (30, 31) else None for i in range(n)],
                      "random": np.linspace(0, 1, n)})
    chosen = balanced_random(table, sources, count=12, seed=0)
    assert np.bincount(np.searchsorted(["a", "b", "c"], np.array(sources)[chosen])).tolist() \
        == [4, 4, 4]
    assert not np.isin([30, 31], chosen).any()
    again = balanced_random(table, sources, count=12, seed=0)
    np.testing.assert_array_equal(chosen, again)
    shares = balanced_random(table, sources, count=19, allocation="proportional")
    assert np.bincount(np.searchsorted(["a", "b", "c"], np.array(sources)[shares])).tolist() \
        == [15, 2, 2]  # 30:4:4 scorable of 38, 19 kept


def test_coverage_and_s2l_share_the_clusters_and_differ_within():
    groups = np.arange(90) % 3
    table = trajectory_table(groups, groups)
    scores = gf.utility_scores(table, "snr-member")
    labels = cluster_records(table, k=3, budget=12).labels
    best = coverage(table, count=12, k=3, utility="snr-member")
    drawn = s2l(table, count=12, k=3)
    for chosen in (best, drawn):
        assert np.bincount(labels[chosen]).tolist() == [4, 4, 4]
    for cluster in range(3):
        members = np.flatnonzero(labels == cluster)
        top = members[np.argsort(-scores[members], kind="stable")[:4]]
        assert sorted(top.tolist()) == sorted(best[labels[best] == cluster].tolist())


# --- strata from the data and from lengths ------------------------------------------------------

def test_field_labels_treat_a_missing_value_as_a_stratum_and_refuse_what_cannot_be_one():
    from gradfilter.data.readers import Record

    records = [Record(0, None, {"source": "a"}), Record(1, None, {"source": 2}),
               Record(2, None, {}), Record(3, None, {"source": "a"}),
               Record(4, None, {}, error="malformed")]
    labels, values = field_labels(records, "source", 5, "d.jsonl")
    assert labels.tolist() == [0, 1, 2, 0, -1] and values == ["a", 2, None]
    with pytest.raises(gf.GradfilterError, match=r"^d.jsonl: record 1: field 'source' holds a "
                                                 r"dict; --stratify needs a string"):
        field_labels([records[0], Record(1, None, {"source": {"x": 1}})], "source", 2,
                     "d.jsonl")


def test_length_bins_are_the_pools_quantiles():
    tokens = np.array([1, 2, 3, 4, 5, 6, 7, 8, 100, 0], dtype=float)
    pool = np.ones(10, bool)
    pool[9] = False  # unscored: no say in the edges
    labels, names, edges = length_labels(tokens, pool, 4)
    assert edges == [3.0, 5.0, 7.0]
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 0]
    assert names == ["< 3 tokens", "[3, 5) tokens", "[5, 7) tokens", ">= 7 tokens"]
    labels, names, _ = length_labels(np.array([5.0] * 6 + [9.0] * 2), np.ones(8, bool), 4)
    assert names == ["[5, 9) tokens", ">= 9 tokens"] and labels.tolist() == [0] * 6 + [1] * 2


# --- threshold -----------------------------------------------------------------------------------

def test_threshold_alone_keeps_every_record_at_or_above_it_and_caps_with_a_budget():
    scores = np.array([0.5, 3.0, np.nan, 2.0, 2.0, -1.0])
    assert select_top(scores, threshold=2.0).indices.tolist() == [1, 3, 4]
    assert select_top(scores, count=2, threshold=2.0).indices.tolist() == [1, 3]
    assert select_top(scores, count=5, threshold=2.0).indices.tolist() == [1, 3, 4]
    assert select_top(scores, threshold=9.0).indices.tolist() == []
    plain = select_top(scores, ratio=0.5)
    cut = cut_score(scores, plain.indices)
    assert select_top(scores, threshold=cut).indices.tolist() == plain.indices.tolist()
    with pytest.raises(gf.GradfilterError, match="--threshold must be a finite number"):
        select_top(scores, threshold=float("nan"))


# --- the command line and the Python API ---------------------------------------------------------

@pytest.fixture
def tiny(tmp_path):
    """30 records from three sources (a 18, b 9, c 3) and a table of their trajectories."""
    sources = ["a", "b", "a", "a", "b", "c", "a", "b", "a", "a"] * 3
    records = [{"instruction": f"q{i}", "output": "x" * (1 + i), "source": s, "meta": {"i": i}}
               for i, s in enumerate(sources)]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    groups = np.arange(30) % 3
    pq.write_table(trajectory_table(groups, groups), tmp_path / "t.parquet")
    return tmp_path, data, sources


def _kept(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_stratify_by_a_field_keeps_the_pools_shares(tiny):
    tmp_path, data, _ = tiny
    out = tmp_path / "s.jsonl"
    code, stdout, err = run_cli("select", data, "--stats", tmp_path / "t.parquet", "--count",
                                "10", "--stratify", "source", "--out", out)
    assert code == 0, err
    kept = [r["source"] for r in _kept(out)]
    assert sorted(kept) == ["a"] * 6 + ["b"] * 3 + ["c"]  # 18:9:3 of 30
    assert "stratified by field 'source': 3 strata, proportional allocation" in stdout
    record = json.loads((tmp_path / "s.jsonl.run.json").read_text())
    assert [s["stratum"] for s in record["stratify"]["strata"]] == ["a", "b", "c"]
    assert [s["taken"] for s in record["stratify"]["strata"]] == [6, 3, 1]
    code, _, err = run_cli("select", data, "--stats", tmp_path / "t.parquet", "--count", "9",
                           "--stratify", "field:source", "--allocate", "even", "--out",
                           tmp_path / "e.jsonl")
    assert code == 0, err
    assert sorted(r["source"] for r in _kept(tmp_path / "e.jsonl")) == \
        ["a"] * 3 + ["b"] * 3 + ["c"] * 3


def test_cli_stratify_by_length_and_by_clusters(tiny):
    tmp_path, data, _ = tiny
    code, stdout, err = run_cli("select", data, "--stats", tmp_path / "t.parquet", "--count",
                                "8", "--stratify", "length:2", "--out", tmp_path / "l.jsonl")
    assert code == 0, err
    tokens = [len(r["output"]) for r in _kept(tmp_path / "l.jsonl")]  # 1 + i tokens
    assert sum(t < 16 for t in tokens) == 4 and sum(t >= 16 for t in tokens) == 4
    code, stdout, err = run_cli("select", data, "--stats", tmp_path / "t.parquet", "--count",
                                "6", "--stratify", "clusters:3", "--within", "random",
                                "--seed", "3", "--out", tmp_path / "c.jsonl")
    assert code == 0, err
    kept = [r["meta"]["i"] % 3 for r in _kept(tmp_path / "c.jsonl")]
    assert sorted(kept) == [0, 0, 1, 1, 2, 2]
    record = json.loads((tmp_path / "c.jsonl.run.json").read_text())
    assert record["stratify"]["k"] == 3 and record["stratify"]["within"] == "random"
    assert record["seed"] == 3 and "K = 3 (trajectory features)" in stdout


def test_cli_threshold_end_to_end_and_the_cut_score_reused(tiny):
    tmp_path, data, _ = tiny
    table = tmp_path / "t.parquet"
    code, _, err = run_cli("select", data, "--stats", table, "--ratio", "0.2", "--utility",
                           "drop", "--out", tmp_path / "top.jsonl")
    assert code == 0, err
    cut = json.loads((tmp_path / "top.jsonl.run.json").read_text())["cut_score"]
    code, stdout, err = run_cli("select", data, "--stats", table, "--threshold", repr(cut),
                                "--utility", "drop", "--out", tmp_path / "again.jsonl")
    assert code == 0, err
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "top.jsonl").read_text()
    assert stdout.startswith("kept 6 of 30 records by drop")
    code, _, err = run_cli("select", data, "--stats", table, "--threshold", repr(cut),
                           "--count", "2", "--utility", "drop", "--out", tmp_path / "two.jsonl")
    assert code == 0, err
    assert len(_kept(tmp_path / "two.jsonl")) == 2


REFUSALS = {
    "unknown field": (["--ratio", "0.5", "--stratify", "nosuch"],
                      "{data}: no record has a field 'nosuch' to stratify by (the first "
                      "record's fields: instruction, output, source, meta)"),
    "a field holding objects": (["--ratio", "0.5", "--stratify", "meta"],
                                "{data}: record 0: field 'meta' holds a dict; --stratify "
                                "needs a string, number or boolean"),
    "K larger than the pool": (["--ratio", "0.5", "--stratify", "clusters:31"],
                               "--stratify clusters:31 asks for 31 clusters but the table has "
                               "only 30 scored records to cluster"),
    "K not a number": (["--ratio", "0.5", "--stratify", "clusters:many"],
                       "--stratify clusters:K needs a positive whole number, got 'many'"),
    "clusters on a baseline's table": (["--ratio", "0.5", "--stratify", "clusters",
                                        "--stats", "{baseline}"],
                                       "--stratify clusters needs the training trajectories "
                                       "of a G-SNR table (its loss_e*_m* and sqnorm_e*_m* "
                                       "columns); this table has none (scored by a baseline?)"),
    "length without the token counts": (["--ratio", "0.5", "--stratify", "length", "--stats",
                                         "{baseline}"],
                                        "--stratify length needs the table's "
                                        "n_response_tokens column; this table has none"),
    "sketches the table lacks": (["--ratio", "0.5", "--stratify", "clusters",
                                  "--cluster-features", "trajectory+sketch", "--stats",
                                  "{nosketch}"],
                                 "--cluster-features trajectory+sketch needs the table's "
                                 "gradient sketches (sketch_e*_m* columns; scored with "
                                 "--sketch-dim 0?)"),
    "--allocate alone": (["--ratio", "0.5", "--allocate", "even"], "--allocate needs --stratify"),
    "--cluster-features without clusters": (["--ratio", "0.5", "--stratify", "source",
                                             "--cluster-features", "loss"],
                                            "--cluster-features needs --stratify clusters"),
    "dedup with strata": (["--ratio", "0.5", "--stratify", "source", "--diversity", "dedup"],
                          "--diversity dedup cannot be combined with --stratify or "
                          "--threshold"),
    "a threshold that is not a number": (["--threshold", "nan"],
                                         "--threshold must be a finite number, got nan"),
    "no budget with strata": (["--stratify", "source"], "give exactly one of --ratio and "
                                                        "--count"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_cli_refusals_are_one_line_and_write_nothing(tiny, case):
    tmp_path, data, _ = tiny
    args, message = REFUSALS[case]
    baseline = tmp_path / "ifd.parquet"
    pq.write_table(pa.table({"index": np.arange(30), "ifd": np.linspace(0, 1, 30)}), baseline)
    nosketch = tmp_path / "nosketch.parquet"
    full = pq.read_table(tmp_path / "t.parquet")
    pq.write_table(full.select([c for c in full.column_names if "sketch" not in c]), nosketch)
    args = [a.format(baseline=baseline, nosketch=nosketch) for a in args]
    if "--stats" not in args:
        args += ["--stats", str(tmp_path / "t.parquet")]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = run_cli("select", data, *args, "--out", tmp_path / "s.jsonl")
    assert code == 2 and stdout == ""
    assert err == f"error: {message.format(data=data)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_python_api_takes_the_options_typed(tiny):
    tmp_path, data, _ = tiny
    subset = gf.select(data, tmp_path / "t.parquet", tmp_path / "s.jsonl", count=6,
                       stratify="clusters", cluster_features="loss", seed=2)
    assert subset.strata is not None and subset.strata["features"] == "loss"
    assert len(subset.indices) == 6
    table = pq.read_table(tmp_path / "t.parquet")  # an in-memory table, as `run` passes it
    again = gf.select(data, table, tmp_path / "t.jsonl", count=6, stratify="clusters",
                      cluster_features="loss", seed=2)
    np.testing.assert_array_equal(np.sort(again.indices), np.sort(subset.indices))


TINY_RUN = ["--members", "2", "--epochs", "2", "--lora-rank", "2", "--batch-size", "4",
            "--collect-batch-size", "8", "--max-length", "48", "--device", "cpu", "--quiet",
            "--sketch-dim", "0"]


def test_run_stratifies_after_scoring_and_refuses_before_it(tmp_path, gpt2_proxy):
    """`run` takes the options as `select` does; what it can refuse before scoring it refuses
    there, with nothing written (no table either)."""
    records = [{"instruction": f"Say {i}", "output": "ok " * (1 + i % 7), "source": "ab"[i % 2]}
               for i in range(12)]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    for args, message in (
            (["--stratify", "clusters", "--method", "ifd"],
             "--stratify clusters needs the training trajectories of --method gsnr; --method "
             "ifd records none"),
            (["--stratify", "clusters:13"],
             f"--stratify clusters:13 asks for 13 clusters but {data} has only 12 records"),
            (["--stratify", "lang"],
             f"{data}: no record has a field 'lang' to stratify by (the first record's fields: "
             "instruction, output, source)")):
        code, _, err = run_cli("run", data, "--out", tmp_path / "s.jsonl", "--proxy", gpt2_proxy,
                               *TINY_RUN, *args)
        assert (code, err) == (2, f"error: {message}\n")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]
    code, stdout, err = run_cli("run", data, "--out", tmp_path / "s.jsonl", "--proxy",
                                gpt2_proxy, *TINY_RUN, "--count", "4", "--stratify", "source",
                                "--utility", "snr-member")
    assert code == 0, err
    assert "stratified by field 'source': 2 strata" in stdout
    assert sorted(r["source"] for r in _kept(tmp_path / "s.jsonl")) == ["a", "a", "b", "b"]
    record = json.loads((tmp_path / "s.jsonl.run.json").read_text())
    assert record["stratify"]["by"] == "field" and record["seed"] == 0
    # --threshold alone: every record at or above it, not run's default 10%
    code, stdout, err = run_cli("run", data, "--out", tmp_path / "t.jsonl", "--proxy",
                                gpt2_proxy, *TINY_RUN, "--threshold", "-1e300", "--utility",
                                "snr-member")
    assert code == 0, err
    assert len(_kept(tmp_path / "t.jsonl")) == 12 and stdout.startswith("kept 12 of 12 ")


def test_fewer_distinct_records_than_clusters_leaves_empty_clusters_in_the_report():
    table = trajectory_table(np.zeros(10), np.zeros(10), noise=0.0)
    scores = np.arange(10.0)
    selection, report = gf.strata.choose(scores, table, count=4, stratify="clusters:3")
    assert [s["pool"] for s in report["strata"]] == [10, 0, 0]
    assert report["empty_clusters"] == 2
    assert sorted(selection.indices.tolist()) == [6, 7, 8, 9]


# --- the report page of a stratified selection ---------------------------------------------------

def _strata_rows(page: str) -> list[list[str]]:
    """The cells of the page's strata table, row by row."""
    start = page.index('<table id="strata">')
    body = page[page.index("<tbody>", start):page.index("</tbody>", start)]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in body.split("<tr>")[1:]]


def _kept_shown(page: str) -> dict[int, bool]:
    """Every record the page shows: whether it carries the kept badge."""
    found = re.findall(r'<article class="record" data-index="(\d+)"><div class="head">'
                       r'[^<]*<span class="badge (\w+)"', page)
    return {int(i): badge == "kept" for i, badge in found}


def test_report_makes_a_stratified_selection_again_and_shows_its_strata(tiny):
    tmp_path, data, _ = tiny
    out = tmp_path / "c.jsonl"
    code, _, err = run_cli("select", data, "--stats", tmp_path / "t.parquet", "--count", "6",
                           "--stratify", "clusters:3", "--within", "random", "--seed", "3",
                           "--out", out, "--report", tmp_path / "c.html")
    assert code == 0, err
    page = (tmp_path / "c.html").read_text()
    kept = {r["meta"]["i"] for r in _kept(out)}
    assert re.search(r'id="kept-count">6<', page)
    shown = _kept_shown(page)
    assert shown and all(flag == (i in kept) for i, flag in shown.items())
    record = json.loads((tmp_path / "c.jsonl.run.json").read_text())
    rows = _strata_rows(page)
    assert [int(r[3]) for r in rows] == [s["taken"] for s in record["stratify"]["strata"]] \
        == [2, 2, 2]
    assert "stratified by 3 clusters of the training trajectories, even allocation, random " \
        "within" in page
    assert "took other numbers" not in page
    # by a field: the strata come from the data, found through the run record
    code, _, err = run_cli("select", data, "--stats", tmp_path / "t.parquet", "--count", "10",
                           "--stratify", "source", "--out", tmp_path / "f.jsonl", "--no-report")
    assert code == 0, err
    code, _, err = run_cli("report", tmp_path / "t.parquet", "--subset", tmp_path / "f.jsonl",
                           "--out", tmp_path / "f.html")
    assert code == 0, err
    rows = _strata_rows((tmp_path / "f.html").read_text())
    assert [(r[0], int(r[1]), int(r[3])) for r in rows] == [("a", 18, 6), ("b", 9, 3),
                                                             ("c", 3, 1)]
    data.rename(tmp_path / "moved.jsonl")  # no data at hand: one line, no page
    code, _, err = run_cli("report", tmp_path / "t.parquet", "--subset", tmp_path / "f.jsonl",
                           "--out", tmp_path / "g.html")
    assert code == 2 and "give its data (--data)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g.html").exists()
