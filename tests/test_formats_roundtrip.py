"""The subset written equals the input records at the selected indices, in every format."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import (
    alpaca_records,
    messages_records,
    sharegpt_records,
    write_json,
    write_jsonl,
)

import gradfilter as gf

CASES = [
    ("alpaca", "json", alpaca_records),
    ("alpaca", "jsonl", alpaca_records),
    ("sharegpt", "json", sharegpt_records),
    ("sharegpt", "jsonl", sharegpt_records),
    ("messages", "jsonl", messages_records),
]


def _read_container(path, container):
    text = path.read_text(encoding="utf-8")
    if container == "json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(("fmt", "container", "make"), CASES)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_subset_is_the_input_records_unchanged(tmp_path, fmt, container, make, arch,
                                               gpt2_proxy, llama_proxy):
    records = make(14)
    write = write_json if container == "json" else write_jsonl
    data = write(tmp_path / f"data.{container}", records)
    config = gf.ScoreConfig(proxy=gpt2_proxy if arch == "gpt2" else llama_proxy, members=2,
                            lora_rank=2, batch_size=4, device="cpu")
    table = gf.score(data, tmp_path / "stats.parquet", config, progress=False)
    assert gf.read_dataset(data).format == fmt
    scores = gf.utility_scores(table, "gsnr")
    for order in ("input", "score"):
        out = tmp_path / f"subset-{order}.{container}"
        selection = gf.select(data, tmp_path / "stats.parquet", out, ratio=0.3, order=order)
        chosen = selection.in_order(order)
        assert len(chosen) == 4
        assert _read_container(out, container) == [records[i] for i in chosen]
        if order == "input":
            assert list(chosen) == sorted(chosen)
        else:
            assert np.all(np.diff(scores[chosen]) <= 0)
    # Each record's source text comes back byte for byte (key order, unicode, spacing).
    source = data.read_text(encoding="utf-8")
    for record in gf.read_dataset(tmp_path / f"subset-input.{container}").records:
        assert record.raw in source


def test_score_field_is_added_last_and_nothing_else_changes(tmp_path, gpt2_proxy):
    records = alpaca_records(10)
    data = write_jsonl(tmp_path / "data.jsonl", records)
    config = gf.ScoreConfig(proxy=gpt2_proxy, members=2, lora_rank=2, batch_size=4, device="cpu")
    table = gf.score(data, tmp_path / "stats.parquet", config, progress=False)
    out = tmp_path / "subset.jsonl"
    selection = gf.select(data, table, out, count=3, utility="gradnorm", score_field="utility",
                          order="score")
    written = _read_container(out, "jsonl")
    scores = gf.utility_scores(table, "gradnorm")
    for row, i in zip(written, selection.indices, strict=True):
        assert list(row) == [*records[i], "utility"]
        assert row["utility"] == pytest.approx(scores[i])
        assert {k: v for k, v in row.items() if k != "utility"} == records[i]
