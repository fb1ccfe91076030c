"""The noise benchmark: corruptions, metrics against brute force, report consistency, reuse."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, sharegpt_records, write_json, write_jsonl

import gradfilter as gf
from gradfilter.bench.corruptions import CORRUPTIONS, NON_ANSWER, corrupt
from gradfilter.bench.intervals import auprc, auroc
from gradfilter.bench.noise import run_noise_benchmark
from gradfilter.bench.noise_report import verdict_cell
from gradfilter.data.conversations import Turn, answering_turns
from gradfilter.scoring.proxy import load_tokenizer
from gradfilter.utilities import TARGET_UTILITIES

PLUGIN = '''
from gradfilter.bench.noise import register_corruption

@register_corruption("shout")
def shout(prompt, response, context):
    return response.upper() + "!!!"
'''


def _brute_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    wins = [1.0 if p > n else 0.5 if p == n else 0.0
            for p in scores[positive] for n in scores[~positive]]
    return float(np.mean(wins))


def test_auroc_equals_pair_counting_with_ties_and_nan():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)
    scores[[3, 17]] = np.nan
    positive = rng.random(60) < 0.7
    assert auroc(scores, positive) == pytest.approx(_brute_auroc(scores, positive), abs=1e-12)


def test_each_corruption_does_what_it_says(gpt2_proxy):
    tokenizer = load_tokenizer(gpt2_proxy)
    conversations = [[Turn("user", f"Question {i}?"),
                      Turn("assistant", f"Answer number {i} is long enough to cut. " * 4)]
                     for i in range(40)]
    kinds = ["swap", "truncate", "repeat", "echo"]
    mixed, labels = corrupt(conversations, 0.2, kinds, seed=5, tokenizer=tokenizer)
    assert sum(label is not None for label in labels) == 8
    assert corrupt(conversations, 0.2, kinds, seed=5, tokenizer=tokenizer) == (mixed, labels)
    assert corrupt(conversations, 0.2, kinds, seed=6, tokenizer=tokenizer)[1] != labels
    originals = {turns[1].text for turns in conversations}
    for before, after, label in zip(conversations, mixed, labels, strict=True):
        new, old = after[1].text, before[1].text
        assert after[0] == before[0]
        if label is None:
            assert after == before
        elif label == "swap":
            assert new != old and new in originals
        elif label == "truncate":
            n_old = len(tokenizer(old, add_special_tokens=False)["input_ids"])
            n_new = len(tokenizer(new, add_special_tokens=False)["input_ids"])
            assert old.startswith(new) and n_new <= math.ceil(0.15 * n_old) + 1
        elif label == "repeat":
            assert len(set(new.split())) <= 3 and len(new.split()) >= len(old.split())
        else:
            assert new == before[0].text


def test_only_answering_turns_are_corrupted():
    turns = [Turn("assistant", "hello"), Turn("system", "s"), Turn("user", "q1"),
             Turn("assistant", "a1"), Turn("user", "q2"), Turn("assistant", "a2")]
    assert answering_turns(turns) == [3, 5]
    mixed, _ = corrupt([turns] * 4, 0.25, ["echo"], seed=0, tokenizer=None)
    corrupted = next(m for m in mixed if m != turns)
    assert [t.text for t in corrupted] == ["hello", "s", "q1", "q1", "q2", "q2"]


def test_a_corruption_that_changes_nothing_leaves_its_record_labelled_clean(tmp_path,
                                                                            gpt2_proxy):
    """E.g. the study's `shuffle` on a one-word answer: the text is the clean original, so the
    label says clean, and the benchmark says how many draws came back unchanged."""
    records = [{"instruction": f"Classify text number {i}.",
                "output": "Positive" if i % 2 else f"It is number {i}, a long answer."}
               for i in range(40)]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    CORRUPTIONS["keep_one_word"] = lambda prompt, response, context: (
        response if " " not in response else response[::-1])
    lines: list[str] = []
    try:
        run_noise_benchmark(data, tmp_path / "bench", gf.ScoreConfig(proxy=gpt2_proxy),
                            methods=["random"], corruptions=["keep_one_word"], fraction=0.5,
                            budgets=[0.1], progress=False, log=lines.append)
    finally:
        del CORRUPTIONS["keep_one_word"]
    labels = pq.read_table(tmp_path / "bench" / "labels-s0.parquet")["corruption"].to_pylist()
    mixed = [json.loads(line) for line in
             (tmp_path / "bench" / "mixed-s0.jsonl").read_text().splitlines()]
    changed = [m["messages"][-1]["content"] != r["output"] for m, r in zip(mixed, records,
                                                                          strict=True)]
    assert [label is not None for label in labels] == changed
    unchanged = 20 - sum(changed)
    assert 0 < unchanged < 20  # some drawn records were one-word answers, left clean
    assert (f"corruption seed 0: {unchanged} drawn record(s) came back unchanged from their "
            "corruption and count as clean") in lines


def test_random_keeps_the_corruption_rate_within_sampling_error(tmp_path, gpt2_proxy):
    data = write_jsonl(tmp_path / "big.jsonl", alpaca_records(1000))
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", seed=3)
    results = run_noise_benchmark(
        data, tmp_path / "bench", config, methods=["random", "length"],
        corruptions=list(CORRUPTIONS)[:4], fraction=0.2, budgets=[0.05, 0.1, 0.15],
        corrupt_seeds=[1], progress=False, log=lambda _: None)
    run = results["seeds"]["1"]
    assert run["corrupted"] == 200
    random = run["methods"]["random"]
    for budget, kept in random["selected"].items():
        share = random[f"contamination@{budget}"]
        # hypergeometric standard deviation of the corrupted share among `kept` of 1000
        sd = math.sqrt(0.2 * 0.8 / kept * (1000 - kept) / 999)
        assert abs(share["estimate"] - 0.2) < 4 * sd, (budget, share)
        # the bootstrap interval is about that wide: +-1.96 sd, within a factor of two
        assert 1.96 * sd / 2 < (share["high"] - share["low"]) / 2 < 1.96 * sd * 2
        assert share["low"] <= share["estimate"] <= share["high"]
    assert abs(random["auroc"]["estimate"] - 0.5) < 0.07
    assert random["auroc"]["low"] < 0.5 < random["auroc"]["high"]
    assert abs(random["auprc"]["estimate"] - 0.2) < 0.05
    # The summary of one seed is its bootstrap; "vs random" is against random's expectation
    # (AUROC 0.5, contamination the corruption rate), not against the seeded draw.
    assert results["summary"]["random"]["auroc"] == random["auroc"]
    difference = results["summary"]["length"]["vs_random"]["auroc"]
    assert difference["estimate"] == pytest.approx(
        run["methods"]["length"]["auroc"]["estimate"] - 0.5)
    shortfall = results["summary"]["length"]["vs_random"]["contamination@0.1"]
    assert shortfall["estimate"] == pytest.approx(
        run["methods"]["length"]["contamination@0.1"]["estimate"] - 0.2)
    # random as its expectation and the band of 200 random orders of the same records
    expected, band = results["random"]["expectation"], results["random"]["reselections"]
    assert band["draws"] == 200 and expected["auroc"] == 0.5
    for budget, kept in random["selected"].items():
        name = f"contamination@{budget}"
        sd = math.sqrt(0.2 * 0.8 / kept * (1000 - kept) / 999)
        assert expected[name] == pytest.approx(0.2)
        assert 1.96 * sd / 1.5 < (band[name]["high"] - band[name]["low"]) / 2 < 1.96 * sd * 1.5
    assert band["auroc"]["low"] < 0.5 < band["auroc"]["high"]
    # a label-blind ranking is tied with random's expectation, measure by measure
    assert set(results["summary"]["random"]["verdicts"]["random"].values()) == {"tied"}


def test_several_corruption_seeds_give_t_intervals_over_the_draws(tmp_path, gpt2_proxy):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(200))
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", seed=3)
    results = run_noise_benchmark(
        data, tmp_path / "bench", config, methods=["random", "length"],
        corruptions=["swap", "echo"], fraction=0.2, budgets=[0.1], corrupt_seeds=[0, 1, 2],
        resamples=200, progress=False, log=lambda _: None)
    estimates = [results["seeds"][s]["methods"]["length"]["auroc"]["estimate"]
                 for s in ("0", "1", "2")]
    assert len(set(estimates)) == 3  # three different draws
    summary = results["summary"]["length"]["auroc"]
    assert summary["estimate"] == pytest.approx(np.mean(estimates))
    half = 4.303 * np.std(estimates, ddof=1) / math.sqrt(3)
    assert summary["high"] - summary["estimate"] == pytest.approx(half)
    for seed in (0, 1, 2):
        assert (tmp_path / "bench" / f"mixed-s{seed}.jsonl").is_file()
    assert "Student's t over 3 corruption seeds" in (tmp_path / "bench" / "results.md").read_text()


def test_cli_report_follows_from_the_saved_tables_and_reruns_reuse_them(tmp_path, gpt2_proxy):
    (tmp_path / "shoutplugin.py").write_text(PLUGIN)
    records = [*sharegpt_records(30), {"id": "bad", "conversations": "not a list"}]
    data = write_json(tmp_path / "chat.json", records)
    out = tmp_path / "bench"
    args = [sys.executable, "-c", "from gradfilter.cli import main; main()", "bench", "noise",
            str(data), "--out-dir", str(out), "--plugin", "shoutplugin", "--corruptions",
            "swap,echo,shout", "--corrupt", "0.3", "--proxy", gpt2_proxy, "--members", "2",
            "--lora-rank", "2", "--batch-size", "4", "--max-length", "128", "--device", "cpu",
            "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    first = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "skipping record 30" in first.stderr
    results = json.loads((out / "results.json").read_text())
    for name in ("results.md", "report.html", "results.json.run.json"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob("*.png"))  # the plots are the page's, no loose images
    page = (out / "report.html").read_text()
    verdicts = page[page.index('<table id="verdicts">'):]
    for method, metrics in results["summary"].items():  # the page's verdicts are results.json's
        cells = [verdict_cell(metrics["verdicts"].get(r)) for r in ("random", "ifd", "length")]
        assert f"<tr><td>{method}</td>" + "".join(f"<td>{c}</td>" for c in cells) in verdicts
    run = results["seeds"]["0"]
    assert run["records"] == 30 and run["corrupted"] == 9 and run["unscorable"] == 0
    assert run["corrupted_by_type"] == {"swap": 3, "echo": 3, "shout": 3}
    assert set(run["methods"]) == {*(u for u in gf.UTILITIES if u not in TARGET_UTILITIES),
                                   "ifd", "perplexity-low", "perplexity-high",
                                   "length", "random", "coverage", "s2l"}
    assert set(run["tables"]) == set(run["methods"]) - {"coverage", "s2l"}  # selectors: none

    labels = pq.read_table(out / "labels-s0.parquet")["corruption"].to_pylist()
    mixed = [json.loads(line) for line in (out / "mixed-s0.jsonl").read_text().splitlines()]
    shouted = [m for m, label in zip(mixed, labels, strict=True) if label == "shout"]
    assert all(m["messages"][-1]["content"].endswith("!!!") for m in shouted)
    corrupted = np.array([label is not None for label in labels])
    for method, metrics in run["methods"].items():
        if method in ("coverage", "s2l"):  # subsets, measured in tests/test_bench_selectors.py
            assert set(metrics["verdicts"]) == {"random", "ifd", "length"}
            continue
        table = gf.load_stats(out / run["tables"][method])
        assert table["skip_reason"].null_count == table.num_rows  # all scored: none left out
        scores = gf.utility_scores(table, method)
        assert metrics["auroc"]["estimate"] == pytest.approx(
            _brute_auroc(scores, ~corrupted), abs=1e-12)
        # AUPRC searches from the bottom; a score that is not finite ranks lowest (as in
        # AUROC), so it is found first: one block above every finite one
        finite = np.isfinite(scores)
        top = -scores[finite].min() + 1 if finite.any() else 0.0
        bottom = np.where(finite, -scores, top)
        assert metrics["auprc"]["estimate"] == pytest.approx(auprc(bottom, corrupted), abs=1e-12)
        for budget, selected in metrics["selected"].items():
            kept = gf.select_top(scores, ratio=float(budget)).indices
            share = metrics[f"contamination@{budget}"]
            assert share["estimate"] == pytest.approx(corrupted[kept].mean(), abs=1e-12)
            assert selected == len(kept)
        vs = metrics["vs_random"]["auroc"]["estimate"]
        assert vs == pytest.approx(metrics["auroc"]["estimate"] - 0.5)
        for reference in ("ifd", "length"):
            if method != reference:
                vs = metrics[f"vs_{reference}"]["auroc"]
                assert vs["estimate"] == pytest.approx(
                    metrics["auroc"]["estimate"]
                    - run["methods"][reference]["auroc"]["estimate"])
                assert metrics["verdicts"][reference]["auroc"] == (
                    "better" if vs["low"] > 0 else "worse" if vs["high"] < 0 else "tied")
    report = (out / "results.md").read_text()
    assert "| gsnr | " in report and "| vs random | vs IFD | vs length |" in report
    assert "## By corruption kind" in report and "## Differences behind the verdicts" in report
    _check_cost(out, run, page, report)

    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("reusing") == 4 and "scoring" not in again.stderr
    assert json.loads((out / "results.json").read_text()) == results


def _check_cost(out, run: dict, page: str, report: str) -> None:
    """Each method's selection cost and subsets, recomputed from the tables' token counts."""
    cost = run["cost"]
    gsnr = gf.load_stats(out / run["tables"]["gsnr"])
    tokens = gsnr["n_tokens"].to_numpy(zero_copy_only=False).astype(np.int64)
    response = gsnr["n_response_tokens"].to_numpy(zero_copy_only=False).astype(np.int64)
    assert (tokens > response).all()  # prompt and response: every record has a prompt
    assert cost["full_pool_row_tokens"] == tokens.sum() and cost["full_pool_records"] == 30
    runs = cost["runs"]
    assert runs["gsnr"]["forward_backward_row_tokens"] == 2 * 2 * tokens.sum()  # M x E x T
    ifd_forward = tokens.sum() + response.sum() + 30  # the response alone after a start token
    assert runs["gsnr"]["forward_row_tokens"] == ifd_forward  # its IFD pass
    ifd_record = json.loads((out / f"{run['tables']['ifd']}.run.json").read_text())
    assert runs["ifd"]["forward_row_tokens"] == ifd_record["forward_tokens"] == ifd_forward
    assert runs["ifd"]["forward_backward_row_tokens"] == 0
    assert runs["gsnr"]["wall_seconds"] == pytest.approx(sum(json.loads(
        (out / f"{run['tables']['gsnr']}.run.json").read_text())["wall_seconds"].values()))
    assert runs["gsnr"]["proxy_parameters"] == ifd_record["proxy_parameters"] > 0
    assert runs["length"]["free"] and runs["random"]["forward_row_tokens"] == 0
    methods = cost["methods"]
    gsnr_total = 4 * tokens.sum() + ifd_forward
    for method, entry in methods.items():
        expected = {"ifd": ifd_forward, "perplexity-low": ifd_forward,
                    "perplexity-high": ifd_forward, "length": 0, "random": 0}.get(method,
                                                                                 gsnr_total)
        assert entry["selection_row_tokens"] == expected, method
        if method in ("coverage", "s2l"):
            continue  # their subsets: tests/test_bench_selectors.py
        scores = gf.utility_scores(gf.load_stats(out / run["tables"][method]), method)
        for budget, b in entry["budgets"].items():
            kept = gf.select_top(scores, ratio=float(budget)).indices
            assert b["records"] == len(kept) == run["methods"][method]["selected"][budget]
            assert b["row_tokens"] == tokens[kept].sum()
            assert b["share_of_full_pool"] == pytest.approx(
                (expected + tokens[kept].sum()) / tokens.sum())
            assert b["pays_at_equal_cost"] == (expected + tokens[kept].sum() < tokens.sum())
    assert "## Is selecting worth it? (seed 0; row-tokens)" in report
    assert f"| gsnr | {4 * tokens.sum():,} | {ifd_forward:,} |" in report
    assert '<section id="cost">' in page and '<table id="cost-methods">' in page


def test_near_duplicate_is_the_template_with_one_word_edited():
    conversations = [[Turn("user", f"Question {i}?"), Turn("assistant", f"Answer {i}.")]
                     for i in range(20)]
    mixed, labels = corrupt(conversations, 0.5, ["near_duplicate"], seed=2, tokenizer=None)
    template = NON_ANSWER.split()
    responses = {m[1].text for m, label in zip(mixed, labels, strict=True) if label}
    assert len(responses) > 1  # edited, not all the same copy
    for text in responses:
        words = text.split()
        assert abs(len(words) - len(template)) == 1
        shorter, longer = sorted((words, template), key=len)
        assert any(longer[:k] + longer[k + 1:] == shorter for k in range(len(longer)))


def test_diversity_figures_follow_from_the_selections(tmp_path, gpt2_proxy):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(30))
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", members=2, lora_rank=2,
                            batch_size=4, sketch_dim=16, seed=1)
    results = run_noise_benchmark(
        data, tmp_path / "bench", config, methods=["gsnr", "length"],
        corruptions=["near_duplicate", "echo"], fraction=0.3, budgets=[0.2, 0.5],
        corrupt_seeds=(0,), progress=False, log=lambda _: None, diversity="dedup",
        diversity_threshold=0.8)
    labels = pq.read_table(tmp_path / "bench" / "labels-s0.parquet")["corruption"].to_pylist()
    corrupted = np.array([label is not None for label in labels])
    seed = results["seeds"]["0"]
    stats = seed["diversity"]["sketches"]
    for method, figures in seed["diversity"]["methods"].items():
        scores = gf.utility_scores(gf.load_stats(tmp_path / "bench" / seed["tables"][method]),
                                   method)
        for budget in ("0.2", "0.5"):
            plain = gf.select_top(scores, ratio=float(budget))
            assert figures["plain"][budget] == pytest.approx(corrupted[plain.indices].mean())
            if method == "gsnr":  # the same selection through `select` on gsnr's own table
                mixed = tmp_path / "bench" / seed["mixed"]  # the data the table was scored on
                diverse = gf.select(mixed, stats, tmp_path / f"{budget}.jsonl",
                                    count=plain.requested, diversity="dedup", utility="gsnr",
                                    diversity_threshold=0.8)
                assert figures["dedup"][budget] == pytest.approx(
                    corrupted[diverse.indices].mean())
                assert figures["removed"][budget] == diverse.diversity["removed"]
            d = figures["difference"][budget]
            assert d["estimate"] == pytest.approx(figures["dedup"][budget] -
                                                  figures["plain"][budget])
            assert d["low"] <= d["estimate"] <= d["high"]
    assert "## Diversity: dedup at cosine >= 0.8" in (tmp_path / "bench" / "results.md").read_text()
