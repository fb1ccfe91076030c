"""The subset written equals the input records at the selected indices, in every format."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import (
    alpaca_records,
    messages_records,
    prompt_completion_records,
    read_records_as,
    sharegpt_records,
    write_records_as,
)

import gradfilter as gf
from gradfilter.data.conversations import parse_fields

CASES = [
    ("alpaca", "json", alpaca_records),
    ("alpaca", "jsonl", alpaca_records),
    ("alpaca", "jsonl.gz", alpaca_records),
    ("alpaca", "parquet", alpaca_records),
    ("sharegpt", "json", sharegpt_records),
    ("sharegpt", "jsonl", sharegpt_records),
    ("sharegpt", "json.gz", sharegpt_records),
    ("messages", "jsonl", messages_records),
    ("messages", "parquet", messages_records),
    ("prompt_completion", "jsonl", prompt_completion_records),
]


def _score(tmp_path, data, proxy):
    config = gf.ScoreConfig(proxy=proxy, members=2, lora_rank=2, batch_size=4, device="cpu")
    return gf.score(data, tmp_path / "stats.parquet", config, progress=False)


@pytest.mark.parametrize(("fmt", "container", "make"), CASES)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_subset_is_the_input_records_unchanged(tmp_path, fmt, container, make, arch,
                                               gpt2_proxy, llama_proxy):
    records = make(14)
    data = write_records_as(tmp_path / f"data.{container}", records)
    table = _score(tmp_path, data, gpt2_proxy if arch == "gpt2" else llama_proxy)
    assert gf.read_dataset(data).format == fmt
    scores = gf.utility_scores(table, "gsnr")
    for order in ("input", "score"):
        out = tmp_path / f"subset-{order}.{container}"
        selection = gf.select(data, tmp_path / "stats.parquet", out, ratio=0.3, order=order,
                              utility="gsnr")
        chosen = selection.in_order(order)
        assert len(chosen) == 4
        assert read_records_as(out) == [records[i] for i in chosen]
        if order == "input":
            assert list(chosen) == sorted(chosen)
        else:
            assert np.all(np.diff(scores[chosen]) <= 0)
    if container == "parquet":
        assert pq.read_schema(tmp_path / "subset-input.parquet").equals(pq.read_schema(data))
    else:  # each record's source text comes back byte for byte
        source = gf.read_dataset(data).records
        for record in gf.read_dataset(tmp_path / f"subset-input.{container}").records:
            assert record.raw in {r.raw for r in source}


@pytest.mark.parametrize("out_format", ["json", "jsonl", "parquet"])
def test_out_format_converts_the_container(tmp_path, gpt2_proxy, out_format):
    records = alpaca_records(10)
    data = write_records_as(tmp_path / "data.json", records)
    table = _score(tmp_path, data, gpt2_proxy)
    out = tmp_path / f"subset.{out_format}"
    selection = gf.select(data, table, out, count=3, out_format=out_format)
    assert read_records_as(out) == [records[i] for i in selection.in_order("input")]


def test_score_field_is_added_last_and_nothing_else_changes(tmp_path, gpt2_proxy):
    records = alpaca_records(10)
    data = write_records_as(tmp_path / "data.jsonl", records)
    table = _score(tmp_path, data, gpt2_proxy)
    out = tmp_path / "subset.jsonl"
    selection = gf.select(data, table, out, count=3, utility="gradnorm", score_field="utility",
                          order="score")
    written = read_records_as(out)
    scores = gf.utility_scores(table, "gradnorm")
    for row, i in zip(written, selection.indices, strict=True):
        assert list(row) == [*records[i], "utility"]
        assert row["utility"] == pytest.approx(scores[i])
        assert {k: v for k, v in row.items() if k != "utility"} == records[i]


def test_fields_map_other_key_names(tmp_path, gpt2_proxy):
    records = [{"question": r["instruction"], "answer": r["output"], "id": k}
               for k, r in enumerate(alpaca_records(8))]
    data = write_records_as(tmp_path / "qa.jsonl", records)
    with pytest.raises(gf.GradfilterError, match="cannot tell the format"):
        gf.read_dataset(data)
    dataset = gf.read_dataset(data, fields=parse_fields("instruction=question,output=answer"))
    assert dataset.format == "alpaca"
    assert dataset.turns(dataset.records[2])[1].text == records[2]["answer"]
    table = _score(tmp_path, dataset, gpt2_proxy)
    assert np.isfinite(gf.utility_scores(table, "gsnr")).all()
    with pytest.raises(gf.GradfilterError, match="--fields"):
        parse_fields("question")


def test_skip_bad_records_keeps_them_unscored(tmp_path, gpt2_proxy):
    records = alpaca_records(8)
    records[1]["output"] = None
    records[5].pop("instruction")
    data = write_records_as(tmp_path / "bad.json", records)
    config = gf.ScoreConfig(proxy=gpt2_proxy, members=1, lora_rank=2, device="cpu")
    with pytest.raises(gf.GradfilterError, match="record 1: field 'output'"):
        gf.score(data, tmp_path / "t.parquet", config, progress=False)
    assert not (tmp_path / "t.parquet").exists()
    table = gf.score(data, tmp_path / "t.parquet", config, skip_bad_records=True, progress=False)
    reasons = table.column("skip_reason").to_pylist()
    assert reasons[1].startswith("invalid record:") and "field 'output'" in reasons[1]
    assert "field 'instruction': is missing" in reasons[5]
    assert [i for i, r in enumerate(reasons) if r] == [1, 5]
    selection = gf.select(data, table, tmp_path / "s.json", ratio=1.0, utility="gsnr")
    assert sorted(selection.indices.tolist()) == [0, 2, 3, 4, 6, 7]
