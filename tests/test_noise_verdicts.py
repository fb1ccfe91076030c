"""The noise benchmark's verdicts: random as its expectation and its spread, exact intervals of
shares that do not collapse, three-way verdicts, and `bench noise --labels`."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, run_cli, write_jsonl

import gradfilter as gf
from gradfilter.bench.intervals import auprc, auroc, share_difference, share_interval
from gradfilter.bench.noise import run_noise_benchmark
from gradfilter.bench.noise_metrics import (
    expected_average_precision,
    method_metrics,
    random_reselections,
)
from gradfilter.errors import GradfilterError


@pytest.mark.parametrize(("records", "corrupted"), [(6, 2), (7, 3), (5, 1)])
def test_expected_average_precision_is_the_mean_over_every_order(records, corrupted):
    precisions = []
    for where in itertools.combinations(range(records), corrupted):
        bad = np.zeros(records, bool)
        bad[list(where)] = True
        precisions.append(auprc(-np.arange(records, dtype=float), bad))  # position 0 first
    assert expected_average_precision(records, corrupted) == pytest.approx(np.mean(precisions))


def test_random_reselections_spread_around_random_expectation():
    bad = np.zeros(300, bool)
    bad[::5] = True  # 60 of 300
    draws = random_reselections(bad, [0.1], draws=400, seed=3)
    assert draws.shape == (400, 3)
    auroc_draws, auprc_draws, share_draws = draws.T
    assert abs(auroc_draws.mean() - 0.5) < 3 * auroc_draws.std() / 20
    assert abs(auprc_draws.mean() - expected_average_precision(300, 60)) < \
        3 * auprc_draws.std() / 20
    assert abs(share_draws.mean() - 0.2) < 3 * share_draws.std() / 20
    assert set(np.round(share_draws * 30, 9)) <= set(range(31))  # whole records of 30 kept
    assert len(set(auroc_draws)) > 100  # draws, not one seeded order


def _pool() -> tuple[list[str | None], dict[str, np.ndarray]]:
    """300 records, 60 corrupted (two kinds); a perfect ranking, its reverse, and a blind one."""
    labels: list[str | None] = [None] * 300
    for k, i in enumerate(range(0, 300, 5)):
        labels[i] = "echo" if k % 2 else "swap"
    bad = np.array([label is not None for label in labels])
    rng = np.random.default_rng(0)
    return labels, {"perfect": np.where(bad, 0.0, 1.0) + rng.random(300) * 0.1,
                    "reversed": np.where(bad, 1.0, 0.0) + rng.random(300) * 0.1,
                    "length": rng.random(300)}


def test_a_clean_subset_is_not_a_certainty_and_verdicts_are_three_way():
    labels, scores = _pool()
    metrics = method_metrics(scores, labels, [0.05, 0.5], resamples=300)
    perfect, flipped = metrics["perfect"], metrics["reversed"]
    # 15 kept, none corrupted: 0 with its exact upper bound, not 0.000 [0.000, 0.000]
    share = perfect["contamination@0.05"]
    assert share == share_interval(0, 15).as_dict() and share["high"] > 0.2
    # against random's 0.2 that is a tie (a blind ranking keeps 15 clean 3.5% of the time);
    # the difference's interval holds the share's exact interval minus the rate
    versus = perfect["vs_random"]["contamination@0.05"]
    assert versus["estimate"] == pytest.approx(-0.2)
    assert versus["low"] <= -0.2 and versus["high"] >= share["high"] - 0.2 > 0
    assert perfect["verdicts"]["random"]["contamination@0.05"] == "tied"
    assert perfect["verdicts"]["random"]["contamination@0.5"] == "better"
    assert perfect["verdicts"]["random"]["auroc"] == "better"
    assert perfect["vs_random"]["auroc"]["estimate"] == pytest.approx(1 - 0.5)
    bad = np.array([label is not None for label in labels])
    assert perfect["vs_random"]["auprc"]["estimate"] == pytest.approx(
        auprc(-scores["perfect"], bad) - expected_average_precision(300, 60))
    assert set(flipped["verdicts"]["random"].values()) == {"worse"}
    # against another method: paired, never narrower than Newcombe's interval of the two shares
    for key in ("0.05", "0.5"):
        kept = metrics["length"]["selected"][key]
        exact = share_difference(
            share_interval(perfect["kept_corrupted"][key], kept),
            share_interval(metrics["length"]["kept_corrupted"][key], kept))
        d = perfect["vs_length"][f"contamination@{key}"]
        assert d["low"] <= exact.low and d["high"] >= exact.high
    assert "vs_length" not in metrics["length"] and metrics["length"]["verdicts"].keys() == {
        "random"}
    # per kind: AUROC against chance with a verdict, and the kind's share of the kept
    assert perfect["auroc_by_type"]["echo"]["estimate"] == pytest.approx(1.0)
    kinds = np.array([label or "" for label in labels])
    for kind in ("echo", "swap"):
        mask = (kinds == "") | (kinds == kind)
        assert metrics["length"]["auroc_by_type"][kind]["estimate"] == pytest.approx(
            auroc(scores["length"][mask], kinds[mask] == ""))
    assert perfect["verdicts_by_type"] == {"echo": "better", "swap": "better"}
    assert flipped["verdicts_by_type"] == {"echo": "worse", "swap": "worse"}
    echo = flipped["contamination_by_type"]["0.05"]["echo"]
    kept = [labels[i] for i in gf.select_top(scores["reversed"], ratio=0.05).indices]
    assert echo["estimate"] == pytest.approx(kept.count("echo") / 15) and echo["low"] > 0


def _noise_run(tmp_path, gpt2_proxy, records=60, **options):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(records))
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", seed=3)
    return data, config, run_noise_benchmark(
        data, tmp_path / "first", config, methods=["random", "length"],
        corruptions=["swap", "echo"], fraction=0.2, budgets=[0.1, 0.2], progress=False,
        log=lambda _: None, resamples=200, **options)


def test_several_draws_report_every_kind_with_each_draws_value(tmp_path, gpt2_proxy):
    _, _, results = _noise_run(tmp_path, gpt2_proxy, corrupt_seeds=[0, 1])
    length = results["summary"]["length"]
    for kind in ("swap", "echo"):
        spread = length["auroc_by_type"][kind]
        assert spread["draws"] == [results["seeds"][s]["methods"]["length"]["auroc_by_type"]
                                   [kind]["estimate"] for s in ("0", "1")]
        share = length["contamination_by_type"]["0.1"][kind]
        assert len(share["draws"]) == 2 and share["high"] > 0
    assert set(length["verdicts"]) == {"random"} and "verdicts_by_type" in length
    # a t interval over two draws is wide: cut to what the measure can take
    for method in ("length", "random"):
        entry = results["summary"][method]
        for name in ("auroc", "auprc", "contamination@0.1", "contamination@0.2"):
            assert 0 <= entry[name]["low"] <= entry[name]["high"] <= 1
            d = entry["vs_random"][name]
            assert -1 <= d["low"] <= d["high"] <= 1
    report = (tmp_path / "first" / "results.md").read_text()
    assert "## By corruption kind" in report and "seeds 0, 1" in report


def test_labels_measure_a_set_corrupted_already(tmp_path, gpt2_proxy):
    """The first 30 records of a mixed set with their labels: nothing is drawn, the labels are
    those given, the layout is bench noise's own (bench finetune --from-noise reads it)."""
    _, config, _ = _noise_run(tmp_path, gpt2_proxy)
    mixed = (tmp_path / "first" / "mixed-s0.jsonl").read_text().splitlines(keepends=True)[:30]
    part = tmp_path / "part.jsonl"
    part.write_text("".join(mixed))
    labels = pq.read_table(tmp_path / "first" / "labels-s0.parquet").slice(0, 30)
    pq.write_table(labels, tmp_path / "part-labels.parquet")
    out = tmp_path / "nested"
    results = run_noise_benchmark(
        part, out, config, methods=["random", "length"], corruptions=["ignored"], fraction=0.9,
        budgets=[0.1, 0.2], progress=False, log=lambda _: None, resamples=200,
        labels=tmp_path / "part-labels.parquet")
    written = pq.read_table(out / "labels-s0.parquet")
    assert written.equals(labels)
    assert (out / "mixed-s0.jsonl").read_text() == part.read_text()
    run = results["seeds"]["0"]
    given = labels["corruption"].to_pylist()
    assert run["corrupted"] == sum(map(bool, given)) and results["labels_file"]
    assert results["corruptions"] == sorted(set(filter(None, given)))
    assert results["corrupt_fraction"] == pytest.approx(sum(map(bool, given)) / 30)
    scores = gf.utility_scores(gf.load_stats(out / run["tables"]["length"]), "length")
    bad = np.array([label is not None for label in given])
    assert run["methods"]["length"]["auroc"]["estimate"] == pytest.approx(auroc(scores, ~bad))
    assert "labelled by" in (out / "results.md").read_text()
    record = json.loads((out / "results.json.run.json").read_text())
    assert record["labels_file"] == str(tmp_path / "part-labels.parquet")
    from gradfilter.bench.finetune import inputs_from_noise

    inputs = inputs_from_noise(out, ["length"], config, None, 0.2, 0)
    assert len(inputs.pool) == 30 and inputs.source["corrupted"] == int(bad.sum())


def _labels(path, rows, **columns):
    table = {"index": pa.array(np.arange(rows)),
             "source_index": pa.array(np.arange(rows)),
             "corruption": pa.array([None] * rows, type=pa.string()), **columns}
    pq.write_table(pa.table(table), path)
    return path


@pytest.mark.parametrize(("columns", "rows", "message"), [
    ({}, 9, "9 label rows, but DATA"),
    ({"index": pa.array([0, 1, 2, 4, 3, 5, 6, 7, 8, 9])}, 10, "row 3 has index 4, expected 3"),
    ({"corruption": pa.array(np.arange(10))}, 10, "column 'corruption' holds int64"),
])
def test_labels_that_do_not_match_data_are_one_line_errors(tmp_path, gpt2_proxy, columns, rows,
                                                           message):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(10))
    labels = _labels(tmp_path / "l.parquet", rows, **columns)
    with pytest.raises(GradfilterError, match=message) as error:
        run_noise_benchmark(data, tmp_path / "out", gf.ScoreConfig(proxy=gpt2_proxy),
                            methods=["random"], corruptions=[], fraction=0.2, budgets=[0.1],
                            progress=False, log=lambda _: None, labels=labels)
    assert str(labels) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_labels_cli_refuses_a_corruption_draw_and_a_file_that_is_not_parquet(tmp_path,
                                                                             gpt2_proxy):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(10))
    labels = _labels(tmp_path / "l.parquet", 10)
    code, _, err = run_cli("bench", "noise", str(data), "--out-dir", str(tmp_path / "o"),
                           "--labels", str(labels), "--corrupt", "0.3", "--proxy", gpt2_proxy)
    assert code != 0 and "--corrupt: nothing is corrupted with --labels" in err
    not_parquet = tmp_path / "labels.json"
    not_parquet.write_text("{}")
    code, _, err = run_cli("bench", "noise", str(data), "--out-dir", str(tmp_path / "o"),
                           "--labels", str(not_parquet), "--proxy", gpt2_proxy)
    assert code != 0 and f"{not_parquet}: not a labels file" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
