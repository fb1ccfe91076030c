"""Sharded input: a glob or a directory of data files (JSON, JSON Lines, Parquet, mixed) is one
dataset, its records numbered across the shards in name order: it scores as the same records
in one file do (same IDs, same fingerprint, so either naming selects with the other's table),
the run record and --annotate say which file each record came from, and a bad record is named
by its own file and place."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import sharegpt_records, write_json, write_jsonl

import gradfilter as gf
from gradfilter.table import DATA_FINGERPRINT, table_meta


@pytest.fixture
def shards(tmp_path) -> dict:
    records = sharegpt_records(9)
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "part-00.jsonl", records[:4])
    write_json(folder / "part-01.json", records[4:6])
    pq.write_table(pa.Table.from_pylist(records[6:]), folder / "part-02.parquet")
    (folder / "README.txt").write_text("not a shard")
    return {"records": records, "dir": folder, "whole": write_jsonl(tmp_path / "all.jsonl",
                                                                     records)}


def test_a_glob_scores_as_the_records_in_one_file(shards, gpt2_proxy, tmp_path):
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu")
    whole = gf.score(shards["whole"], tmp_path / "whole.parquet", config, method="length",
                     progress=False)
    sharded = gf.score(str(shards["dir"] / "part-*"), tmp_path / "sharded.parquet", config,
                       method="length", progress=False)
    for column in ("length", "record_id", "record_hash"):
        assert sharded.column(column).to_pylist() == whole.column(column).to_pylist()
    assert table_meta(sharded)[DATA_FINGERPRINT] == table_meta(whole)[DATA_FINGERPRINT]
    run = json.loads((tmp_path / "sharded.parquet.run.json").read_text())
    assert [(Path(s["file"]).name, s["first"], s["records"]) for s in run["shards"]] == [
        ("part-00.jsonl", 0, 4), ("part-01.json", 4, 2), ("part-02.parquet", 6, 3)]


def test_a_directory_of_shards_selects_with_the_whole_files_table(shards, gpt2_proxy,
                                                                  tmp_path, cli):
    gf.score(shards["whole"], tmp_path / "whole.parquet",
             gf.ScoreConfig(proxy=gpt2_proxy, device="cpu"), method="length", progress=False)
    out, annotated = tmp_path / "kept.jsonl", tmp_path / "decisions.jsonl"
    code, stdout, err = cli("select", shards["dir"], "--stats", tmp_path / "whole.parquet",
                            "--count", "3", "--out", out, "--annotate", annotated,
                            "--no-report")
    assert code == 0, err
    assert "warning" not in stdout  # the data check matched: the same records
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(record in shards["records"] for record in kept) and len(kept) == 3
    rows = [json.loads(line)["gradfilter"] for line in annotated.read_text().splitlines()]
    assert [(r["index"], Path(r["shard"]).name, r["shard_index"]) for r in rows][3:7] == [
        (3, "part-00.jsonl", 3), (4, "part-01.json", 0), (5, "part-01.json", 1),
        (6, "part-02.parquet", 0)]


def test_a_bad_record_is_named_by_its_shard_and_a_pattern_matching_nothing_refused(
        shards, cli, tmp_path):
    bad = shards["dir"] / "part-00.jsonl"
    bad.write_text(bad.read_text() + "{not json\n")
    code, _, err = cli("score", str(shards["dir"] / "*.jsonl"), "--out", tmp_path / "t.parquet",
                       "--method", "length")
    assert code == 2 and err.count("\n") == 1 and "part-00.jsonl" in err and "line 5" in err, err
    code, _, err = cli("score", str(tmp_path / "nothing-*.jsonl"), "--out",
                       tmp_path / "t.parquet", "--method", "length")
    assert code == 2 and "no file matches this pattern" in err
    assert not (tmp_path / "t.parquet").exists()
