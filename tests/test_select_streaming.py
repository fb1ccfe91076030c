"""`select` streams: scores come from the table batch by batch, the input is read again record by
record (or batch by batch) and never held; every container, order and limit gives the records
at the chosen indices, unchanged. No model: the tables here are made up."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, run_cli, write_jsonl

import gradfilter as gf
from gradfilter import table as table_contract
from gradfilter.data import readers
from gradfilter.table import load_scores
from gradfilter.utilities import TARGET_UTILITIES


def _sqnorm_table(n: int, seed: int = 0) -> pa.Table:
    """Losses and squared norms for 3 members at epochs 1 and 3 and IFD ratios, some records
    unscored (null or NaN)."""
    rng = np.random.default_rng(seed)
    columns = {"index": pa.array(np.arange(n)), "ifd_ratio": pa.array(rng.uniform(0.5, 1.5, n))}
    for epoch in (1, 3):
        for member in range(3):
            values = rng.gamma(2.0, 1.0 + (epoch == 1), n)
            values[0] = np.nan
            mask = np.zeros(n, bool)
            mask[min(2, n - 1)] = True
            columns[f"sqnorm_e{epoch}_m{member}"] = pa.array(values, mask=mask)
            columns[f"loss_e{epoch}_m{member}"] = pa.array(values / 2 + 1, mask=mask)
    return pa.table(columns).replace_schema_metadata(
        {"gradfilter": json.dumps({"early": 1, "late": 3, "members": 3})})


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(table_contract, "_STATS_BATCH_ROWS", 4)
    monkeypatch.setattr(readers, "_ARROW_BATCH_ROWS", 4)


# (the alignment utilities need a target's columns: tests/test_target.py)
@pytest.mark.parametrize("utility", [u for u in gf.UTILITIES if u not in TARGET_UTILITIES])
def test_scores_read_batch_by_batch_equal_the_whole_table(tmp_path, small_batches, utility):
    table = _sqnorm_table(23)
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=10)
    expected = gf.utility_scores(table, utility)
    gated_out = (table["ifd_ratio"].to_numpy() >= 1) & utility.endswith("-gated")
    assert np.isnan(expected[[0, 2]]).all()
    assert (np.isfinite(expected[3:]) == ~gated_out[3:]).all()
    np.testing.assert_array_equal(load_scores(tmp_path / "t.parquet", utility), expected)
    stored = gf.with_utilities(table)  # the stored column is read as it is
    pq.write_table(stored, tmp_path / "stored.parquet", row_group_size=10)
    np.testing.assert_array_equal(load_scores(tmp_path / "stored.parquet", utility), expected)


def test_scores_from_a_table_without_what_is_needed(tmp_path):
    pq.write_table(pa.table({"index": [0, 1]}), tmp_path / "t.parquet")
    with pytest.raises(gf.GradfilterError, match="holds no scores: neither sqnorm columns"):
        load_scores(tmp_path / "t.parquet", "gsnr")
    with pytest.raises(gf.GradfilterError, match="holds no scores"):
        load_scores(tmp_path / "t.parquet", "nope")
    pq.write_table(_sqnorm_table(3), tmp_path / "s.parquet")
    with pytest.raises(gf.GradfilterError, match="no utility 'nope'; it offers"):
        load_scores(tmp_path / "s.parquet", "nope")
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(gf.GradfilterError, match=r"x\.parquet: not a Parquet statistics table"):
        load_scores(tmp_path / "x.parquet", "gsnr")


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.json"])
@pytest.mark.parametrize("order", ["input", "score"])
def test_select_streams_json_input_holding_no_record(tmp_path, records_alive, name, order):
    records = alpaca_records(17)
    text = ("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            if ".jsonl" in name else json.dumps(records, ensure_ascii=False, indent=2))
    data = tmp_path / name
    data.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    table = _sqnorm_table(17)

    out = tmp_path / f"subset-{name}"
    selection = gf.select(data, table, out, ratio=0.5, order=order, score_field="s",
                          utility="gsnr")
    assert len(records_alive) >= 17 and max(records_alive) <= 1  # at most the one in hand
    chosen = selection.in_order(order)
    scores = gf.utility_scores(table, "gsnr")
    assert len(chosen) == 9 and not {0, 2} & set(chosen.tolist())
    raw = gzip.decompress(out.read_bytes()) if name.endswith(".gz") else out.read_bytes()
    written = ([json.loads(line) for line in raw.decode().splitlines()] if ".jsonl" in name
               else json.loads(raw))
    assert written == [{**records[i], "s": scores[i]} for i in chosen]


@pytest.mark.parametrize("order", ["input", "score"])
@pytest.mark.parametrize("out_format", ["parquet", "hf", "jsonl"])
def test_select_from_parquet_in_batches(tmp_path, small_batches, order, out_format):
    import datasets

    records = [{**r, "n": k} for k, r in enumerate(alpaca_records(19))]
    data = tmp_path / "d.parquet"
    source = pa.Table.from_pylist(records).replace_schema_metadata({"origin": "test"})
    pq.write_table(source, data, row_group_size=7)
    out = tmp_path / f"subset.{out_format}"
    selection = gf.select(data, _sqnorm_table(19), out, count=8, order=order, utility="gsnr",
                          out_format=out_format, score_field="score" if order == "score" else None)
    chosen = selection.in_order(order)
    expected = [records[i] for i in chosen]
    if out_format == "parquet":
        written = pq.read_table(out)
        assert written.schema.metadata[b"origin"] == b"test"
    elif out_format == "hf":
        written = datasets.load_from_disk(str(out)).data.table
    else:
        written = pa.Table.from_pylist([json.loads(x) for x in out.read_text().splitlines()])
    if order == "score":
        scores = gf.utility_scores(_sqnorm_table(19), "gsnr")
        assert written.column("score").to_pylist() == [scores[i] for i in chosen]
        written = written.drop_columns(["score"])
    assert written.to_pylist() == expected
    assert written.column_names == source.column_names


@pytest.mark.parametrize("name", ["d.jsonl", "d.parquet"])
def test_select_with_limit_reads_only_the_first_records(tmp_path, name):
    records = alpaca_records(12)
    data = write_jsonl(tmp_path / name, records) if name.endswith(".jsonl") else tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(records), data)
    out = tmp_path / "subset.jsonl"
    selection = gf.select(data, _sqnorm_table(5), out, ratio=1.0, limit=5, out_format="jsonl",
                          utility="gsnr")
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        records[i] for i in selection.in_order("input")]
    assert selection.in_order("input").tolist() == [1, 3, 4]


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.parquet"])
@pytest.mark.parametrize("rows", [7, 9])
def test_a_table_of_another_length_is_refused_and_nothing_written(tmp_path, name, rows):
    records = alpaca_records(8)
    data = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(records), data)
    elif name.endswith(".jsonl"):
        write_jsonl(data, records)
    else:
        data.write_text(json.dumps(records), encoding="utf-8")
    pq.write_table(_sqnorm_table(rows), tmp_path / "t.parquet")
    code, _, err = run_cli("select", data, "--stats", tmp_path / "t.parquet", "--ratio", "1.0",
                           "--out", tmp_path / "subset.jsonl")
    assert code == 2
    assert err == (f"error: the statistics table has {rows} rows but {data} has 8 records; "
                   "score this file first\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "t.parquet"])


def test_a_scored_place_that_cannot_be_read_is_an_error(tmp_path):
    """A table that gives a score to an unreadable line was not made from this file."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n'
                    '{"instruction": "c", "output": "d"}\n', encoding="utf-8")
    table = pa.table({"gsnr": [1.0, 3.0, 2.0]})
    with pytest.raises(gf.GradfilterError, match=r"line 2 \(record 1\): malformed JSON.*"
                                                 "the statistics table scores it"):
        gf.select(data, table, tmp_path / "s.jsonl", count=1)
    assert not (tmp_path / "s.jsonl").exists()
    subset = gf.select(data, pa.table({"gsnr": [1.0, np.nan, 2.0]}), tmp_path / "s.jsonl",
                       count=3)
    assert subset.report.skipped and [p.index for p in subset.best] == [2, 0]
    assert (tmp_path / "s.jsonl").read_text().splitlines() == [
        '{"instruction": "a", "output": "b"}', '{"instruction": "c", "output": "d"}']
