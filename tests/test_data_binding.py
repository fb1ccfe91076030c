"""A statistics table belongs to its data: `score` stores the data's fingerprint and every
record's ID and content hash; `select`, `report` and the benchmarks refuse a table of other,
edited or reordered data in one line naming both fingerprints and the first record that
differs, and write nothing, unless --allow-data-mismatch; a table written before tables
recorded their data is used with a warning. The identity rule is recomputed here from its
documentation."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, sharegpt_records, write_json, write_jsonl

import gradfilter as gf
from gradfilter.errors import GradfilterError
from gradfilter.table import DATA_FINGERPRINT, META_KEY, RECORD_HASH, RECORD_ID, table_meta


def _length_table(proxy: str, data: Path, out: Path):
    return gf.score(data, out, gf.ScoreConfig(proxy=proxy, device="cpu"), method="length",
                    progress=False)


def _canonical_sha256(record: dict) -> bytes:
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).digest()


def _refusal(code: int, err: str, *named: str) -> str:
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    for text in named:
        assert text in err, (text, err)
    return err


@pytest.fixture
def scored(tmp_path, gpt2_proxy) -> dict:
    """Alpaca data (no ids), ShareGPT data (ids) of the same length, each with its table."""
    alpaca = write_json(tmp_path / "alpaca.json", alpaca_records(8))
    sharegpt = write_json(tmp_path / "sharegpt.json", sharegpt_records(8))
    return {"alpaca": alpaca, "sharegpt": sharegpt,
            "alpaca_table": _length_table(gpt2_proxy, alpaca, tmp_path / "alpaca.parquet"),
            "sharegpt_table": _length_table(gpt2_proxy, sharegpt, tmp_path / "sharegpt.parquet"),
            "dir": tmp_path}


def test_the_table_holds_ids_hashes_and_the_fingerprint_by_the_documented_rule(scored):
    records = sharegpt_records(8)
    records[5]["id"] = records[2]["id"]  # a repeated id names no single record
    data = write_json(scored["dir"] / "dup.json", records)
    table = _length_table(table_meta(scored["sharegpt_table"])["config"]["proxy"], data,
                          scored["dir"] / "dup.parquet")
    digests = [_canonical_sha256(r) for r in records]
    expected_ids = [r["id"] for r in records]
    expected_ids[5] = "sha256:" + digests[5].hex()[:16]
    assert table.column_names[:3] == ["index", RECORD_ID, RECORD_HASH]
    assert table.column(RECORD_ID).to_pylist() == expected_ids
    assert table.column(RECORD_HASH).to_pylist() == [d.hex()[:16] for d in digests]
    assert table_meta(table)[DATA_FINGERPRINT] == (
        "sha256:" + hashlib.sha256(b"".join(digests)).hexdigest())
    run = json.loads((scored["dir"] / "dup.parquet.run.json").read_text())
    assert run[DATA_FINGERPRINT] == table_meta(table)[DATA_FINGERPRINT]


def test_the_same_records_in_another_container_and_key_order_bind_alike(scored, cli):
    """JSON Lines, gzip-compressed, keys in another order: the same data, the same table."""
    reordered_keys = [dict(reversed(list(r.items()))) for r in alpaca_records(8)]
    path = scored["dir"] / "alpaca.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n"
                                           for r in reordered_keys).encode()))
    code, _, err = cli("select", path, "--stats", scored["dir"] / "alpaca.parquet",
                         "--count", "2", "--out", scored["dir"] / "subset.jsonl")
    assert code == 0, err
    run = json.loads((scored["dir"] / "subset.jsonl.run.json").read_text())
    assert run["data_check"] == "match"
    assert run[DATA_FINGERPRINT] == table_meta(scored["alpaca_table"])[DATA_FINGERPRINT]


def test_select_refuses_a_table_of_other_data_naming_both_fingerprints(scored, cli):
    out = scored["dir"] / "subset.json"
    code, _, err = cli("select", scored["alpaca"], "--stats", scored["dir"] / "sharegpt.parquet",
                       "--ratio", "0.5", "--out", out)
    table_fp = table_meta(scored["sharegpt_table"])[DATA_FINGERPRINT][:23]
    data_fp = table_meta(scored["alpaca_table"])[DATA_FINGERPRINT][:23]
    _refusal(code, err, table_fp, data_fp, "the first record that differs: record 0 ('conv-0' "
             "in the table", "--allow-data-mismatch")
    assert not out.exists() and not Path(f"{out}.run.json").exists()


def test_select_refuses_a_reordered_copy_and_says_where_the_record_went(scored, cli):
    records = alpaca_records(8)
    data = write_json(scored["dir"] / "moved.json", [records[0], records[3], records[1],
                                                       records[2], *records[4:]])
    out = scored["dir"] / "subset.json"
    out.write_text("mine")
    code, _, err = cli("select", data, "--stats", scored["dir"] / "alpaca.parquet", "--count",
                       "2", "--out", out)
    _refusal(code, err, "record 1 (", "the data's record 1 is the table's record 3: reordered?")
    assert out.read_text() == "mine"  # nothing the user has is overwritten


def test_select_names_an_edited_record_by_its_id(scored, cli):
    records = sharegpt_records(8)
    records[4]["conversations"][1]["value"] += " (edited)"
    data = write_json(scored["dir"] / "edited.json", records)
    code, _, err = cli("select", data, "--stats", scored["dir"] / "sharegpt.parquet",
                       "--count", "2", "--out", scored["dir"] / "subset.json")
    _refusal(code, err, "record 4 ('conv-4': its content changed)")


def test_parquet_written_from_parquet_is_checked_before_anything_is_written(scored, cli):
    """Parquet to Parquet copies Arrow rows without reading records: checked beforehand."""
    data = scored["dir"] / "alpaca-other.parquet"
    pq.write_table(pa.Table.from_pylist(alpaca_records(9)[1:]), data)
    out = scored["dir"] / "subset.parquet"
    code, _, err = cli("select", data, "--stats", scored["dir"] / "alpaca.parquet", "--count",
                       "2", "--out", out)
    _refusal(code, err, "record 0 (")
    assert not out.exists()


def test_allow_data_mismatch_uses_the_table_and_says_so(scored, cli):
    out = scored["dir"] / "subset.json"
    code, stdout, err = cli("select", scored["alpaca"], "--stats",
                            scored["dir"] / "sharegpt.parquet", "--count", "2", "--out", out,
                            "--allow-data-mismatch")
    assert code == 0, err
    assert "warning: the statistics table" in stdout and "used anyway" in stdout
    run = json.loads(Path(f"{out}.run.json").read_text())
    assert run["data_check"] == "mismatch allowed"
    assert run["table_data_fingerprint"] != run[DATA_FINGERPRINT]
    assert len(json.loads(out.read_text())) == 2


def test_report_refuses_a_table_of_other_data_unless_allowed(scored, cli):
    page = scored["dir"] / "page.html"
    args = ("report", scored["dir"] / "sharegpt.parquet", "--data", scored["alpaca"], "--out", page)
    code, _, err = cli(*args)
    _refusal(code, err, "the first record that differs: record 0 ('conv-0' in the table",
             "--allow-data-mismatch")
    assert not page.exists()
    code, _, err = cli(*args, "--allow-data-mismatch")
    assert code == 0, err
    assert "was scored on other data than" in page.read_text(encoding="utf-8")


def test_a_table_from_before_fingerprints_is_used_with_a_warning(scored, cli):
    old = scored["alpaca_table"].drop_columns([RECORD_ID, RECORD_HASH])
    meta = {k: v for k, v in table_meta(old).items() if k != DATA_FINGERPRINT}
    old = old.replace_schema_metadata({META_KEY: json.dumps(meta)})
    pq.write_table(old, scored["dir"] / "old.parquet")
    out = scored["dir"] / "subset.json"
    code, stdout, err = cli("select", scored["sharegpt"], "--stats", scored["dir"] / "old.parquet",
                            "--count", "2", "--out", out)
    assert code == 0, err
    assert "records no data fingerprint" in stdout
    assert json.loads(Path(f"{out}.run.json").read_text())["data_check"] == "unchecked"


def test_select_in_python_refuses_too(scored):
    with pytest.raises(GradfilterError, match="scored on other data"):
        gf.select(scored["alpaca"], scored["sharegpt_table"], scored["dir"] / "s.json", count=2)
    assert not (scored["dir"] / "s.json").exists()


def test_bench_noise_refuses_a_given_table_of_other_data(tmp_path, gpt2_proxy):
    from gradfilter.bench.noise import run_noise_benchmark

    data = write_json(tmp_path / "d.json", alpaca_records(10))
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu")
    options = dict(methods=["length"], corruptions=["swap"], fraction=0.2, budgets=[0.5],
                   resamples=100, progress=False, log=lambda line: None)
    run_noise_benchmark(data, tmp_path / "first", config, **options)
    mixed = [json.loads(line) for line in (tmp_path / "first" / "mixed-s0.jsonl").open()]
    other = write_jsonl(tmp_path / "other.jsonl", mixed[::-1])  # the mixed set, reversed
    _length_table(gpt2_proxy, other, tmp_path / "other.parquet")
    with pytest.raises(GradfilterError, match=r"other data .*record 0 .*reordered\?"):
        run_noise_benchmark(data, tmp_path / "second", config,
                            tables={"length": tmp_path / "other.parquet"}, **options)
    lines: list[str] = []
    run_noise_benchmark(data, tmp_path / "third", config, allow_data_mismatch=True,
                        tables={"length": tmp_path / "other.parquet"},
                        **{**options, "log": lines.append})
    assert any("used anyway (--allow-data-mismatch)" in line for line in lines)


def test_bench_finetune_refuses_a_pool_table_of_other_data(scored):
    from gradfilter.bench.finetune import inputs_from_pool

    target = gf.ScoreConfig(proxy=table_meta(scored["alpaca_table"])["config"]["proxy"])
    tables = {"length": str(scored["dir"] / "sharegpt.parquet")}
    with pytest.raises(GradfilterError, match=r"scored on other data than .*alpaca\.json"):
        inputs_from_pool(str(scored["alpaca"]), tables, target, None, 0.25, seed=0)
    inputs = inputs_from_pool(str(scored["alpaca"]), {"length": str(scored["dir"] /
                                                                    "alpaca.parquet")},
                              target, None, 0.25, seed=0)
    assert len(inputs.scores["length"]) == 8
