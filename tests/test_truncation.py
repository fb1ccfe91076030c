"""Truncation is visible: the summary and the run record say how many records are longer than
--max-length and how many response tokens were never seen; --truncation drop leaves those
records unscored with that reason."""

from __future__ import annotations

import json
from dataclasses import asdict

from conftest import alpaca_records, write_json

import gradfilter as gf
from gradfilter.config import config_key
from gradfilter.data.dataset import read_dataset
from gradfilter.scoring.proxy import load_tokenizer
from gradfilter.scoring.tokenization import encode
from gradfilter.table import table_meta

MAX_LENGTH = 100


def _full_and_kept(proxy: str, data) -> list[tuple[int, int, bool]]:
    """Per record: (response tokens of the whole record, response tokens within MAX_LENGTH,
    longer than MAX_LENGTH), counted here from the untruncated encoding."""
    tokenizer = load_tokenizer(proxy)
    dataset = read_dataset(data)
    counts = []
    for record in dataset.records:
        whole = encode(dataset.turns(record), tokenizer, "plain", 10_000)
        counts.append((whole.n_response_tokens,
                       int(whole.response_mask[1:MAX_LENGTH].sum()),
                       len(whole.input_ids) > MAX_LENGTH))
    return counts


def test_keep_reports_the_truncated_records_and_the_tokens_never_seen(tmp_path, gpt2_proxy,
                                                                      cli):
    data = write_json(tmp_path / "d.json", alpaca_records(8))
    code, _, err = cli("score", data, "--out", tmp_path / "s.parquet", "--proxy", gpt2_proxy,
                       "--method", "length", "--max-length", MAX_LENGTH, "--device", "cpu")
    assert code == 0, err
    counts = _full_and_kept(gpt2_proxy, data)
    truncated = sum(t for *_, t in counts)
    assert 0 < truncated < len(counts)  # the case tests something
    kept_total = sum(k for _, k, _ in counts)
    unscored_cut = [(f, k) for f, k, t in counts if t and k == 0]
    unseen = sum(f - k for f, k, _ in counts)  # all of an unscored record's
    summary = json.loads((tmp_path / "s.parquet.run.json").read_text())["truncation"]
    assert summary == {"mode": "keep", "max_length": MAX_LENGTH, "records": 8,
                       "truncated_records": truncated,
                       "truncated_unscored": len(unscored_cut),
                       "response_tokens": sum(f for f, _, _ in counts),
                       "response_tokens_unseen": unseen}
    assert table_meta(gf.load_stats(tmp_path / "s.parquet"))["truncation"] == summary
    assert kept_total + unseen == summary["response_tokens"]
    share = f"{unseen / summary['response_tokens']:.1%}"
    assert (f"truncated: {truncated} of 8 records ({truncated / 8:.0%}) are longer than "
            f"--max-length {MAX_LENGTH}: scored on their first {MAX_LENGTH} tokens") in err
    assert f"{unseen} of {summary['response_tokens']} response tokens ({share}) never seen" in err


def test_drop_leaves_truncated_records_unscored_with_that_reason(tmp_path, gpt2_proxy, cli):
    data = write_json(tmp_path / "d.json", alpaca_records(8))
    out = tmp_path / "subset.json"
    code, stdout, err = cli("run", data, "--out", out, "--proxy", gpt2_proxy, "--method",
                            "length", "--max-length", MAX_LENGTH, "--truncation", "drop",
                            "--ratio", "1", "--device", "cpu")
    assert code == 0, err
    counts = _full_and_kept(gpt2_proxy, data)
    table = gf.load_stats(f"{out}.stats.parquet")
    reasons = table.column("skip_reason").to_pylist()
    for (_, _, truncated), reason in zip(counts, reasons, strict=True):
        assert (reason == f"longer than max_length ({MAX_LENGTH} tokens; --truncation drop)"
                if truncated else reason is None)
    kept = json.loads(out.read_text())
    assert len(kept) == sum(not t for *_, t in counts)  # --ratio 1 keeps every scored record
    dropped_tokens = sum(f for f, _, t in counts if t)
    summary = table_meta(table)["truncation"]
    assert summary["mode"] == "drop" and summary["response_tokens_unseen"] == dropped_tokens
    assert "left unscored (--truncation drop)" in stdout


def test_an_unknown_truncation_mode_is_refused(tmp_path, gpt2_proxy, cli):
    data = write_json(tmp_path / "d.json", alpaca_records(3))
    code, _, err = cli("score", data, "--out", tmp_path / "s.parquet", "--proxy", gpt2_proxy,
                       "--truncation", "cut")
    assert code == 2 and "--truncation" in err and not (tmp_path / "s.parquet").exists()


def test_keep_leaves_the_keys_of_earlier_runs_as_they_were():
    """Checkpoints and benchmark caches are keyed by the config: the default adds nothing."""
    before = {k: v for k, v in asdict(gf.ScoreConfig()).items() if k != "truncation"}
    assert config_key(gf.ScoreConfig()) == before
    assert config_key(gf.ScoreConfig(truncation="drop"))["truncation"] == "drop"
