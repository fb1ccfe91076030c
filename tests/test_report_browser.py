"""The report pages as a person sees them: opened from file:// in a real headless chromium,
with no console error and no request, the figures drawn, the records and the counts there. A
screenshot of each goes to artifacts/ (CI keeps it)."""

from __future__ import annotations

import json

from browser import image_shown, open_page, require_browser, screenshot
from conftest import alpaca_records, run_cli, write_json, write_jsonl

import gradfilter as gf

TINY = ["--members", "2", "--lora-rank", "2", "--batch-size", "4", "--device", "cpu", "--quiet"]


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
        screenshot(opened, "report-bench-noise.png")
