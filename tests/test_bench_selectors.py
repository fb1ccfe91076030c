"""The named selectors (coverage, s2l, balanced_random) in the benchmarks: their subsets on the
records a benchmark may select, their noise verdicts against random, IFD and length (hand-made
pools, then a tiny proxy end to end), and their rows in the fine-tune benchmark."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, run_cli, write_jsonl
from test_strata import trajectory_table

import gradfilter as gf
from gradfilter.bench.intervals import share_difference, share_interval
from gradfilter.bench.noise import run_noise_benchmark
from gradfilter.bench.noise_metrics import method_metrics, selector_metrics
from gradfilter.bench.selectors import SelectorInputs, selector_subsets
from gradfilter.errors import GradfilterError
from gradfilter.strata import coverage, s2l


def _labels() -> tuple[list[str | None], np.ndarray]:
    """300 records, 60 corrupted (two kinds), and a length-like ranking blind to them."""
    labels: list[str | None] = [None] * 300
    for k, i in enumerate(range(0, 300, 5)):
        labels[i] = "echo" if k % 2 else "swap"
    return labels, np.random.default_rng(0).random(300)


def test_selector_subsets_run_on_the_selectable_rows_only():
    groups = np.arange(90) % 3
    table = trajectory_table(groups, groups)
    rows = np.arange(0, 90, 2)  # 45 selectable records
    inputs = SelectorInputs(table=table, seed=4)
    part = table.take(rows)
    for method, select in (("coverage", coverage), ("s2l", s2l)):
        chosen = selector_subsets(method, inputs, rows, [0.2, 0.5])
        assert chosen["0.2"].tolist() == select(part, ratio=0.2, seed=4).tolist()
        assert len(chosen["0.2"]) == 9 and len(chosen["0.5"]) == 23  # half up, as select
        assert chosen["0.5"].max() < len(rows)
    sources = ["a"] * 60 + ["b"] * 20 + ["c"] * 10
    drawn = selector_subsets("balanced_random", SelectorInputs(values=sources, seed=1),
                             np.arange(90), [0.3])["0.3"]
    assert np.unique(np.array(sources)[drawn], return_counts=True)[1].tolist() == [9, 9, 9]
    again = selector_subsets("balanced_random", SelectorInputs(values=sources, seed=1),
                             np.arange(90), [0.3])["0.3"]
    np.testing.assert_array_equal(drawn, again)


@pytest.mark.parametrize(("values", "words"), [
    ([None] * 20, "no record has a field 'source'"),
    ([f"id{i}" for i in range(20)], "an ID rather than a source"),
])
def test_balanced_random_refuses_a_field_that_is_missing_or_an_id(values, words):
    with pytest.raises(GradfilterError, match=words):
        selector_subsets("balanced_random", SelectorInputs(values=values), np.arange(20), [0.5])


def test_coverage_needs_a_table_of_trajectories():
    with pytest.raises(GradfilterError, match="needs a G-SNR table"):
        selector_subsets("s2l", SelectorInputs(), np.arange(10), [0.5])


def test_selector_verdicts_hold_the_subset_fixed_and_never_beat_the_exact_intervals():
    labels, length = _labels()
    bad = np.array([label is not None for label in labels])
    clean_first = np.concatenate([np.flatnonzero(~bad), np.flatnonzero(bad)])
    chosen = {"clean": {"0.05": np.sort(clean_first[:15]), "0.5": np.sort(clean_first[:150])},
              "dirty": {"0.05": np.flatnonzero(bad)[:15], "0.5": np.sort(clean_first[-150:])}}
    metrics = selector_metrics(chosen, labels, [0.05, 0.5], {"length": length}, resamples=300)
    ranked = method_metrics({"length": length}, labels, [0.05, 0.5], resamples=300)["length"]
    clean, dirty = metrics["clean"], metrics["dirty"]
    assert "auroc" not in clean and "auprc" not in clean
    assert clean["contamination@0.05"] == share_interval(0, 15).as_dict()
    # 15 clean of a pool at 0.2 is a tie with random (as a ranking's would be); 150 clean is
    # better; every record corrupted is worse
    assert clean["verdicts"]["random"] == {"contamination@0.05": "tied",
                                           "contamination@0.5": "better"}
    assert set(dirty["verdicts"]["random"].values()) == {"worse"}
    versus = clean["vs_random"]["contamination@0.5"]
    assert versus["estimate"] == pytest.approx(0 - 0.2)
    assert versus["low"] <= share_interval(0, 150).low - 0.2
    # against length: paired, the estimate the difference of the shares, never narrower than
    # Newcombe's interval of the two
    for key in ("0.05", "0.5"):
        d = clean["vs_length"][f"contamination@{key}"]
        mine = share_interval(0, len(chosen["clean"][key]))
        theirs = share_interval(ranked["kept_corrupted"][key], ranked["selected"][key])
        exact = share_difference(mine, theirs)
        assert d["estimate"] == pytest.approx(mine.estimate - theirs.estimate)
        assert d["low"] <= exact.low and d["high"] >= exact.high
    assert clean["verdicts"]["length"]["contamination@0.5"] == "better"
    # per kind: the kind's share of the kept
    echo = dirty["contamination_by_type"]["0.05"]["echo"]
    kinds = [labels[i] for i in chosen["dirty"]["0.05"]]
    assert echo["estimate"] == pytest.approx(kinds.count("echo") / 15)


SELECTED = ["snr-member", "coverage", "s2l", "balanced_random", "length", "random"]


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory, gpt2_proxy):
    """One noise run of 40 records from four sources with every selector beside three
    rankings: its directory, its scoring config and its results."""
    where = tmp_path_factory.mktemp("selectors")
    records = alpaca_records(40)
    for i, record in enumerate(records):
        record["source"] = ("alpaca", "dolly", "oasst")[i % 3] if i < 36 else "lima"
    data = write_jsonl(where / "d.jsonl", records)
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", members=2, lora_rank=2,
                            batch_size=8, max_length=64, seed=2)
    results = run_noise_benchmark(
        data, where / "bench", config, methods=SELECTED, corruptions=["swap", "echo"],
        fraction=0.25, budgets=[0.2, 0.5], progress=False, log=lambda _: None, resamples=200)
    return where / "bench", config, results


def test_noise_benchmark_measures_the_selectors_beside_the_rankings(noise_run):
    bench, config, results = noise_run
    run = results["seeds"]["0"]
    assert list(run["methods"]) == ["snr-member", "length", "random", "coverage", "s2l",
                                    "balanced_random"]
    assert "coverage" not in run["tables"]  # a selector has no scores of its own
    labels = pq.read_table(bench / "labels-s0.parquet")["corruption"].to_pylist()
    gsnr = gf.load_stats(bench / run["tables"]["snr-member"])
    scored = gsnr["skip_reason"].is_null().to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(scored)
    bad = np.array([label is not None for label in labels])[rows]
    expected = coverage(gsnr.take(rows), ratio=0.2, seed=config.seed)
    entry = run["methods"]["coverage"]
    assert entry["selected"]["0.2"] == len(expected)
    assert entry["kept_corrupted"]["0.2"] == int(bad[expected].sum())
    assert entry["contamination@0.2"]["estimate"] == pytest.approx(bad[expected].mean())
    assert run["selectors"]["coverage"]["table"] == run["tables"]["snr-member"]
    assert run["selectors"]["balanced_random"]["field"] == "source"
    for method in ("coverage", "s2l", "balanced_random"):
        summary = results["summary"][method]
        assert set(summary["verdicts"]) == {"random", "length"}
        assert "auroc" not in summary
    report = (bench / "results.md").read_text()
    assert "| coverage | - | - |" in report and "| s2l | - | - |" in report
    page = (bench / "report.html").read_text()
    assert "balanced_random" in page


def test_noise_refuses_balanced_random_without_the_field(tmp_path, gpt2_proxy):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(20))
    out = tmp_path / "bench"
    code, _, err = run_cli("bench", "noise", str(data), "--out-dir", out, "--methods",
                           "balanced_random,length", "--proxy", gpt2_proxy, "--device", "cpu",
                           "--corruptions", "swap", "--quiet")
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no record has a field 'source'" in errors[0]
    assert not out.exists()


def test_finetune_benchmark_fine_tunes_the_selectors_subsets(noise_run, tmp_path, gpt2_proxy):
    from gradfilter.bench.finetune import (
        FinetuneConfig,
        inputs_from_noise,
        inputs_from_pool,
        run_finetune_benchmark,
    )

    bench, _, results = noise_run
    tables = results["seeds"]["0"]["tables"]
    target = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", max_length=64)
    measured = inputs_from_noise(bench, None, target, None, 0.2, seed=0)  # the noise run's
    assert measured.selectors == ("coverage", "s2l", "balanced_random")
    assert set(measured.scores) == {"snr-member", "length", "random"}
    pool = inputs_from_pool(str(bench / "mixed-s0.jsonl"),
                            {m: str(bench / tables[m]) for m in ("length", "snr-member")},
                            target, None, 0.2, seed=0, selectors=["s2l"])
    assert pool.chooser.table == str(bench / tables["snr-member"])  # the one with trajectories
    inputs = inputs_from_noise(bench, ["length", "coverage", "s2l", "balanced_random"], target,
                               None, 0.2, seed=0)
    assert set(inputs.scores) == {"length"}
    config = FinetuneConfig(epochs=1, batch_size=4, lr=5e-3, lora_rank=2, eval_every=2,
                            seeds=(0,))
    out = tmp_path / "ft"
    results = run_finetune_benchmark(inputs, out, target, config, [0.3], progress=False,
                                     log=lambda _: None)
    table = results["results"]["0.3"]
    assert list(table) == ["untrained", "balanced_random", "coverage", "length", "s2l",
                           "random", "full"]
    positions = np.flatnonzero(inputs.usable)
    stats = gf.load_stats(bench / tables["snr-member"])
    expected = positions[coverage(stats.take(positions), ratio=0.3, seed=0)]
    assert results["subsets"]["coverage@0.3"] == expected.tolist()
    for name in ("coverage", "s2l", "balanced_random"):
        assert table[name]["records"] == table["length"]["records"]
        assert table[name]["vs_random"]["auc"] in ("better", "tied", "worse")
        assert "final_vs_length" in table[name]
    assert "final_vs_length" not in table["length"]
    markdown = (out / "results.md").read_text()
    assert "final - length" in markdown and "| coverage |" in markdown
    # the cost: the G-SNR run over the records it scored, each fine-tune, the full pool
    cost = results["cost"]
    tokens = np.array([len(e.input_ids) for e in inputs.pool])
    scored = stats["skip_reason"].is_null().to_numpy(zero_copy_only=False)
    selection = cost["selection"]
    assert selection["scored_tokens"] == tokens[scored].sum()
    assert selection["forward_backward_row_tokens"] == 2 * 2 * tokens[scored].sum()  # M x E
    rows = cost["budgets"]["0.3"]["subsets"]
    full = cost["budgets"]["0.3"]["full_pool_same_epochs_row_tokens"]
    assert full == tokens[inputs.usable].sum()  # one epoch over the selectable records
    kept = np.array(results["subsets"]["coverage@0.3"])
    passes = table["coverage"]["passes"]
    assert rows["coverage"]["forward_backward_row_tokens"] == pytest.approx(
        passes * tokens[kept].sum(), abs=1)
    assert rows["coverage"]["selection_row_tokens"] == (
        selection["forward_backward_row_tokens"] + selection["forward_row_tokens"])
    assert rows["length"]["selection_row_tokens"] == 0
    assert rows["length"]["with_selection_over_full_pool"] == pytest.approx(
        rows["length"]["forward_backward_row_tokens"] / full)
    assert "## Is selecting worth it?" in markdown
    assert "Is selecting worth it?" in (out / "report.html").read_text()


def test_selection_cost_counts_each_pass_of_the_scoring_run():
    from gradfilter.bench.costs import ScoringWork, selection_cost

    tokens, response = np.array([10, 20, 30]), np.array([4, 5, 6])
    during = ScoringWork("t.parquet", "gpt2", members=4, epochs=2, collect="during",
                         ifd_pass=True, wall_seconds=None)
    cost = selection_cost(during, tokens, response)
    assert cost["forward_backward_row_tokens"] == 4 * 2 * 60
    assert cost["forward_row_tokens"] == 60 + 15 + 3  # prompt and response, response alone
    snapshot = selection_cost(ScoringWork("t.parquet", "gpt2", 4, 2, "snapshot", False, 9.0),
                              tokens, response)
    assert snapshot["forward_backward_row_tokens"] == (4 * 2 + 4 * 2) * 60
    assert snapshot["forward_row_tokens"] == 0 and snapshot["wall_seconds"] == 9.0
