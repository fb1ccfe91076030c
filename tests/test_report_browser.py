"""The report pages as a person sees them: opened from file:// in a real headless chromium,
with no console error and no request, the figures drawn, the records and the counts there. A
screenshot of each goes to artifacts/ (CI keeps it)."""

from __future__ import annotations

import json

import numpy as np
from browser import image_shown, open_page, require_browser, screenshot
from conftest import alpaca_records, run_cli, write_json, write_jsonl

import gradfilter as gf

TINY = ["--members", "2", "--lora-rank", "2", "--batch-size", "4", "--device", "cpu", "--quiet"]


def _cells(opened, selector: str) -> list[list[str]]:
    """The text of each body cell of the table at `selector`, row by row, as shown."""
    rows = opened.page.locator(f"{selector} tbody tr")
    return [[cell.strip() for cell in rows.nth(i).locator("td").all_inner_texts()]
            for i in range(rows.count())]


def _count(opened, selector: str) -> int:
    return int(opened.page.locator(selector).inner_text().replace(",", ""))


def test_the_report_of_a_tiny_run_in_a_real_browser(tmp_path, gpt2_proxy):
    require_browser()
    records = alpaca_records(24)
    data = write_json(tmp_path / "data.json", records)
    subset_path = tmp_path / "subset.json"
    code, out, err = run_cli("run", data, "--out", subset_path, "--proxy", gpt2_proxy,
                             "--ratio", "0.25", *TINY)
    assert code == 0, err
    page = tmp_path / "report.html"
    assert f"report page:      {page}" in out
    subset = json.loads(subset_path.read_text(encoding="utf-8"))
    record = json.loads((tmp_path / "subset.json.run.json").read_text())
    table = gf.load_stats(tmp_path / "subset.json.stats.parquet")
    best = int(gf.select_top(gf.utility_scores(table, record["utility"]), count=1).indices[0])
    with open_page(page) as opened:
        assert opened.errors == [] and opened.console_errors() == []
        assert opened.foreign_requests() == []
        assert image_shown(opened, "#score-histogram img")
        top = opened.page.locator("#records-top article.record").first
        assert top.is_visible()
        assert top.get_attribute("data-index") == str(best)
        assert records[best]["instruction"] in top.inner_text()
        assert _count(opened, "#kept-count") == len(subset) == 6
        assert _count(opened, "#dropped-count") == len(records) - len(subset)
        assert _count(opened, "#records-count") == len(records)
        # the cost: 2 members x 2 epochs over the tokens the table counted, the run record's
        # device and the proxy's size (counted here from the model itself)
        tokens = table["n_tokens"].to_numpy(zero_copy_only=False).astype(np.int64)
        scored = table["skip_reason"].is_null().to_numpy(zero_copy_only=False)
        rows = _cells(opened, "#cost-table")
        assert rows[0][2] == f"{2 * 2 * tokens[scored].sum():,}"
        assert rows[0][4] == "cpu, torch.float32"
        assert rows[2][1:3] == [f"{scored.sum():,}", f"{tokens[scored].sum():,}"]
        kept = gf.select_top(gf.utility_scores(table, record["utility"]), ratio=0.25).indices
        assert rows[3][1:3] == ["6", f"{tokens[kept].sum():,}"]
        from transformers import AutoModelForCausalLM

        size = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(
            gpt2_proxy).parameters())
        assert f"{size:,} parameters" in opened.page.locator("#break-even").inner_text()
        screenshot(opened, "report-tiny-run.png")


def test_the_noise_benchmark_page_in_a_real_browser(tmp_path, gpt2_proxy):
    require_browser()
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(40))
    out = tmp_path / "bench"
    code, _, err = run_cli("bench", "noise", data, "--out-dir", out, "--methods",
                           "length,random", "--corruptions", "swap,echo", "--budgets", "0.1,0.2",
                           "--resamples", "100", "--proxy", gpt2_proxy, "--device", "cpu",
                           "--quiet")
    assert code == 0, err
    assert f"report page: {out / 'report.html'}\n" in err
    summary = json.loads((out / "results.json").read_text())["summary"]
    with open_page(out / "report.html") as opened:
        assert opened.errors == [] and opened.console_errors() == []
        assert opened.foreign_requests() == []
        assert image_shown(opened, "#contamination-plot img")
        rows = opened.page.locator("#summary table").first.locator("tbody tr")
        assert rows.count() == len(summary) == 2
        shown = opened.page.locator("#summary").inner_text()
        for method, measures in summary.items():
            auroc = measures["auroc"]
            assert (f"{auroc['estimate']:.4g} [{auroc['low']:.4g}, {auroc['high']:.4g}]"
                    in shown), method
        # what selecting cost: length and random run no model; each subset's epoch
        cost = json.loads((out / "results.json").read_text())["seeds"]["0"]["cost"]
        runs = _cells(opened, "#cost-runs")
        assert [row[:3] for row in runs] == [["length", "free", "free"],
                                             ["random", "free", "free"]]
        rows = _cells(opened, "#cost-methods")
        assert len(rows) == 2 * 2
        for row in rows:
            budget = cost["methods"][row[0]]["budgets"][f"{float(row[1].rstrip('%')) / 100:g}"]
            assert row[3:6] == ["0", f"{budget['records']:,}", f"{budget['row_tokens']:,}"]
            assert row[6] == f"{budget['row_tokens'] / cost['full_pool_row_tokens']:.1%}"
            assert row[7] == "yes"
        screenshot(opened, "report-bench-noise.png")


def _cost_table(path, whole: bool = True, record: bool = True, meta: bool = True):
    """A G-SNR table of 12 records (3 members, 2 epochs, snapshot collection, the IFD pass), the
    last one unscored, with known token counts (`whole`: n_tokens too, else response tokens
    only) and (`record`) a run record; its whole and response token counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gradfilter.table import with_utilities

    n = 12
    response = np.arange(3, 3 + n)
    tokens = response + 7 * (np.arange(n) % 4 + 1)  # prompts of 7 to 28 tokens
    bad = np.arange(n) == n - 1
    columns = {"index": pa.array(np.arange(n)),
               "n_response_tokens": pa.array(response.astype(np.int32)),
               **({"n_tokens": pa.array(tokens.astype(np.int32))} if whole else {}),
               "truncated": pa.array(np.zeros(n, bool)),
               "skip_reason": pa.array([("no response tokens within max_length" if b else None)
                                        for b in bad], pa.string())}
    rng = np.random.default_rng(4)
    for epoch in (1, 2):
        for m in range(3):
            for name in ("loss", "sqnorm"):
                columns[f"{name}_e{epoch}_m{m}"] = pa.array(np.where(bad, np.nan,
                                                                     rng.gamma(2.0, 1.0, n)))
    info = {"method": "gsnr", "early": 1, "late": 2, "members": 3,
            "config": {"proxy": "tiny-proxy", "members": 3, "epochs": 2, "collect": "snapshot",
                       "ifd_pass": True}}
    table = pa.table(columns)
    if meta:
        table = table.replace_schema_metadata({"gradfilter": json.dumps(info)})
    pq.write_table(with_utilities(table), path)
    if record:
        (path.parent / f"{path.name}.run.json").write_text(json.dumps({
            "stage": "score", "dtype": "torch.bfloat16", "proxy_parameters": 134515008,
            "device": {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3"},
            "wall_seconds": {"read_and_tokenize": 1.0, "train_epoch1": 10.5,
                             "train_epoch2": 12.0}}))
    return tokens, response


def test_the_cost_section_in_a_real_browser(tmp_path):
    """Row-tokens recomputed here from the hand-made counts; the run record's wall time,
    device and size; "not recorded" without a record; response tokens where no n_tokens."""
    from browser import launch

    require_browser()
    cases = {"whole": {}, "no-record": {"record": False}, "old": {"whole": False},
             "no-meta": {"meta": False}}
    counts, pages = {}, {}
    for name, options in cases.items():
        stats = tmp_path / f"{name}.parquet"
        counts[name] = _cost_table(stats, **options)
        pages[name] = tmp_path / f"{name}.html"
        code, _, err = run_cli("report", stats, "--count", "4", "--utility", "gsnr", "--out",
                               pages[name])
        assert code == 0, err
    scored = np.arange(12) < 11
    kept = gf.select_top(gf.utility_scores(gf.load_stats(tmp_path / "whole.parquet"), "gsnr"),
                         count=4).indices
    with launch() as browser:
        for name in cases:
            tokens, response = counts[name]
            if name == "old":
                tokens = response  # the table holds response tokens only
            full, subset = tokens[scored].sum(), tokens[kept].sum()
            backward = (3 * 2 + 3 * 2) * full  # members x (epochs + the snapshot's two)
            forward = full + response[scored].sum() + 11  # the IFD pass: T + R + N
            with open_page(pages[name], browser) as opened:
                assert opened.errors == [] and opened.console_errors() == []
                rows = _cells(opened, "#cost-table")
                said = opened.page.locator("#break-even").inner_text()
                note = opened.page.locator("#cost").inner_text()
                assert rows[-2] == ["one epoch on the full pool (the scored records)", "11",
                                    f"{full:,}", "-", "-"], name
                assert rows[-1] == ["one epoch on the kept subset", "4", f"{subset:,}", "-",
                                    "-"], name
                if name == "no-meta":
                    assert rows[0][2].startswith("not recorded") and "not known" in said
                    continue
                assert rows[0][:3] == ["scoring this table (gsnr: 3 members x 2 epochs, with "
                                       "the snapshot's gradient passes), forward+backward",
                                       "11", f"{backward:,}"], name
                assert rows[1][2] == f"{forward:,}"
                share = (backward + forward + subset) / full
                ratio = (backward + forward) / (full - subset)
                assert f"{share:.1%} of one epoch on the full pool" in said
                assert f"exceeds {ratio:.3g} times the proxy's" in said
                if name == "no-record":
                    assert rows[0][3:] == ["not recorded (no run record)", "not recorded"]
                    assert "parameter count not recorded (no run record)" in said
                else:
                    assert rows[0][3:] == ["23.5 s", "NVIDIA H100 80GB HBM3, torch.bfloat16"]
                    assert "134,515,008 parameters" in said
                    assert "-parameter target for one epoch" in said
                assert ("response tokens only" in note) == (name == "old")
                if name == "whole":
                    screenshot(opened, "report-cost.png")
