"""The command line end to end, and its errors: one line, exit 2, no output file."""

from __future__ import annotations

import json

from conftest import alpaca_records, cli_process, write_json

import gradfilter as gf
from gradfilter.utilities import DEFAULT_UTILITY

TINY = ["--members", "2", "--lora-rank", "2", "--batch-size", "4", "--device", "cpu", "--quiet"]


def test_run_then_select_from_the_table(tmp_path, gpt2_proxy):
    records = alpaca_records(20)
    data = write_json(tmp_path / "alpaca_data.json", records)
    out = tmp_path / "subset.json"
    result = cli_process("run", str(data), "--ratio", "0.1",
                         "--out", str(out), "--proxy", gpt2_proxy, "--threads", "1",
                         *TINY)
    assert result.returncode == 0, result.stderr
    assert "kept 2 of 20 records by snr-member-gated" in result.stdout
    assert "best 3 by snr-member-gated" in result.stdout
    assert "worst 3 by snr-member-gated" in result.stdout
    stats = tmp_path / "subset.json.stats.parquet"
    assert stats.is_file() and (tmp_path / "subset.json.run.json").is_file()
    record = json.loads((tmp_path / "subset.json.stats.parquet.run.json").read_text())
    assert record["device"]["cpu_threads"] == 1  # --threads, in the run record
    table = gf.load_stats(stats)
    expected = gf.select_top(gf.utility_scores(table, DEFAULT_UTILITY),
                             ratio=0.1).in_order("input")
    assert json.loads(out.read_text()) == [records[i] for i in expected]

    again = tmp_path / "by-drop.json"
    result = cli_process("select", str(data), "--stats", str(stats), "--count", "5", "--utility",
                         "drop", "--out", str(again))
    assert result.returncode == 0, result.stderr
    expected = gf.select_top(gf.utility_scores(table, "drop"), count=5).in_order("input")
    assert json.loads(again.read_text()) == [records[i] for i in expected]


def test_score_options_are_all_there():
    result = cli_process("score", "--help")
    for option in ("--proxy", "--members", "--epochs", "--early", "--late", "--lora-rank",
                   "--lora-alpha", "--lr", "--batch-size", "--collect-batch-size",
                   "--max-length", "--seed", "--device", "--dtype", "--save-adapters",
                   "--checkpoint-dir", "--checkpoint-every", "--bucket / --no-bucket",
                   "--threads"):
        assert option in result.stdout


def test_bad_record_is_one_line_exit_2_and_no_output(tmp_path, gpt2_proxy):
    records = alpaca_records(5)
    records[3]["output"] = 42
    data = write_json(tmp_path / "bad.json", records)
    out = tmp_path / "subset.json"
    result = cli_process("run", str(data), "--out", str(out), "--proxy", gpt2_proxy, *TINY)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {data}: record 3: field 'output': must be a string, got int")
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [data]


def test_table_and_data_that_do_not_match_are_refused(tmp_path, gpt2_proxy):
    data = write_json(tmp_path / "a.json", alpaca_records(8))
    config = gf.ScoreConfig(proxy=gpt2_proxy, members=1, lora_rank=2, device="cpu")
    gf.score(data, tmp_path / "t.parquet", config, progress=False)
    other = write_json(tmp_path / "b.json", alpaca_records(9))
    result = cli_process("select", str(other), "--stats",
                         str(tmp_path / "t.parquet"), "--ratio", "0.5",
                         "--out", str(tmp_path / "s.json"))
    assert result.returncode == 2
    assert "has 8 rows but" in result.stderr and "has 9 records" in result.stderr
    assert not (tmp_path / "s.json").exists()
