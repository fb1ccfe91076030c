"""The quieter cases of issue 35, point 4: a flipped bit in a stored score, an empty checkpoint
file, a full disk, records that read fine but say less than they seem to (a key twice, an empty
reply, a dataset of copies), wrong types given to the Python API, and JSON(L) written out as
Parquet or a Hugging Face directory in record batches."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, run_cli, write_jsonl

import gradfilter as gf
from gradfilter.table import write_table

# --- Parquet page checksums ---------------------------------------------------------------


def _flip_a_bit_in(path: Path, column: str) -> None:
    """Flip one bit in the middle of `column`'s stored bytes (a value, not the file's frame)."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(meta.column(k) for k in range(meta.num_columns)
                 if meta.column(k).path_in_schema == column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + chunk.total_compressed_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_stored_score_is_an_error(tmp_path):
    scores = np.random.default_rng(0).standard_normal(1000)
    stats = tmp_path / "s.parquet"
    write_table(pa.table({"index": np.arange(1000), "gsnr": scores}), stats)
    write_jsonl(tmp_path / "d.jsonl",
                [{"instruction": f"q{i}", "output": "a"} for i in range(1000)])
    _flip_a_bit_in(stats, "gsnr")
    code, _, err = run_cli("select", tmp_path / "d.jsonl", "--stats", stats, "--ratio", "0.1",
                           "--out", tmp_path / "o.jsonl")
    assert code == 2
    assert err == (f"error: {stats}: the statistics table is damaged: a page's checksum does "
                   "not match its bytes (a flipped bit on disk or in a copy); restore the file "
                   "or score again\n")
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(gf.GradfilterError, match="is damaged"):
        gf.load_stats(stats)


# --- checkpoint files -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["state.json", "train-000000004/member0.pt",
                                  "collect-e1/b0000000-0000001-abcd-m0.npz"])
def test_an_empty_checkpoint_file_gives_a_reason(tmp_path, name):
    from gradfilter.scoring import checkpoint

    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    if name.endswith(".json"):
        read = lambda: checkpoint._read_json(path)  # noqa: E731
    elif name.endswith(".pt"):
        read = lambda: checkpoint._load(path)  # noqa: E731
    else:
        box = checkpoint.Checkpoint.__new__(checkpoint.Checkpoint)
        box.root = tmp_path
        read = lambda: box.shards(1)  # noqa: E731
    with pytest.raises(gf.GradfilterError) as caught:
        read()
    what = "collection shard" if name.endswith(".npz") else "checkpoint file"
    assert str(caught.value) == (f"{path}: unreadable {what}: the file is empty (0 bytes: cut "
                                 "off by a crash or a full disk?)")


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_checkpoint_file_it_could_not_write(tmp_path):
    from gradfilter.scoring.checkpoint import durable_write

    with pytest.raises(gf.GradfilterError) as caught:
        durable_write(tmp_path / "state.json", _full)
    assert str(caught.value) == f"cannot write {tmp_path / 'state.json'}: No space left on device"
    assert os.listdir(tmp_path) == []


def test_a_full_disk_names_the_table_it_could_not_write(tmp_path, monkeypatch):
    from gradfilter import table

    monkeypatch.setattr(table.pq, "write_table", _full)
    with pytest.raises(gf.GradfilterError) as caught:
        write_table(pa.table({"gsnr": [1.0]}), tmp_path / "s.parquet")
    assert str(caught.value) == f"cannot write {tmp_path / 's.parquet'}: No space left on device"
    assert os.listdir(tmp_path) == []


# --- records that say less than they seem to -------------------------------------------------

QUIET = [
    '{"instruction": "Say yes.", "output": "no", "output": "yes"}',  # a key twice
    '{"instruction": "Say nothing.", "output": "  "}',  # an empty reply
    *['{"instruction": "Add 2 and 2.", "output": "4"}'] * 4,  # records 2-5: one record, 4 times
    '{"instruction": "Add 2 and 3.", "output": "5"}',
]


@pytest.fixture
def quiet_data(tmp_path) -> Path:
    data = tmp_path / "q.jsonl"
    data.write_text("\n".join(QUIET) + "\n", encoding="utf-8")
    return data


def test_inspect_counts_and_names_the_quiet_cases(quiet_data):
    code, out, err = run_cli("inspect", quiet_data, "--strict")
    assert code == 1, err
    assert ("exact copies: 3 records are exact copies of an earlier record; the most repeated, "
            "record 2, is 4 of 7 (57%)\n") in out
    assert "1 record with a duplicate key, 1 with an empty reply (listed below)\n" in out
    assert "\n2 problems\n" in out
    assert (f"  {quiet_data}: record 0: duplicate key 'output' in one JSON object (only the "
            "last value is read; the record is scored)\n") in out
    assert (f"  {quiet_data}: record 1: empty reply (turn 2 of 2; scored: only its end-of-turn "
            "tokens carry loss)\n") in out
    assert (f"warning: {quiet_data}: the dataset is mostly copies of one record: 3 records are "
            "exact copies") in out


def test_score_reports_the_quiet_cases_in_its_summary_and_run_record(quiet_data, tmp_path,
                                                                     gpt2_proxy):
    out = tmp_path / "s.parquet"
    code, _, err = run_cli("score", quiet_data, "--out", out, "--method", "length", "--proxy",
                           gpt2_proxy, "--quiet")
    assert code == 0, err
    shown = " ".join(err.split())  # the summary (on stderr) wraps at the console's width
    assert ("1 record has a key twice in one JSON object (the last value read; the first: "
            "record 0, key 'output')") in shown
    assert "1 record has an empty reply (scored; the first: record 1)" in shown
    assert ("3 records are exact copies of an earlier record (all kept); the most repeated, "
            "record 2, appears 4 times") in shown
    record = json.loads(Path(f"{out}.run.json").read_text())
    assert record["duplicate_keys"] == {"0": ["output"]}
    assert record["empty_replies"] == [1]
    assert record["exact_copies"] == {"records": 3, "most_copied": 2, "count": 4}


def test_counts_of_records_agree_with_their_verb():
    from gradfilter.data.quality import copies_of_earlier, records

    assert records(1, "has", "have") == "1 record has"
    assert records(2, "has", "have") == "2 records have"
    assert records(0) == "0 records"
    assert copies_of_earlier(1) == "1 record is an exact copy of an earlier record"
    assert copies_of_earlier(3) == "3 records are exact copies of an earlier record"


def test_a_key_inside_a_string_is_not_a_duplicate_key(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": 'Explain {"output": 1, "output": 2}', "output": '"output": fine'}])
    code, out, err = run_cli("inspect", data)
    assert code == 0, err
    assert "\n0 problems\n" in out and "duplicate key" not in out


# --- the Python API answers wrong types in one line -----------------------------------------

@pytest.fixture
def api_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "d.jsonl", alpaca_records(4))
    pq.write_table(pa.table({"gsnr": [1.0, 2.0, 3.0, 4.0]}), tmp_path / "s.parquet")
    return tmp_path


SELECT_CALLS = {
    "count=True": (dict(count=True), "--count must be a whole number, got bool True"),
    "count=2.5": (dict(count=2.5), "--count must be a whole number, got float 2.5"),
    "ratio='0.5'": (dict(ratio="0.5"), "--ratio must be a number, got str '0.5'"),
    "a number as --out": (dict(out=7, count=2),
                          "the subset (--out) must be a path (a string or a Path), got int 7"),
    "a number as DATA": (dict(data=7, count=2),
                         "DATA must be a path (a string or a Path), got int 7"),
    "a number as --stats": (dict(stats=7, count=2),
                            "--stats must be a path (a string or a Path), got int 7"),
    "limit=-1": (dict(limit=-1, count=2), "--limit must be at least 1, got -1"),
    "limit='3'": (dict(limit="3", count=2), "--limit must be a whole number, got str '3'"),
}


@pytest.mark.parametrize("case", list(SELECT_CALLS))
def test_select_answers_a_wrong_argument_with_a_gradfilter_error(api_place, case):
    arguments, message = SELECT_CALLS[case]
    call = {"data": "d.jsonl", "stats": "s.parquet", "out": "o.jsonl", **arguments}
    with pytest.raises(gf.GradfilterError) as caught:
        gf.select(call.pop("data"), call.pop("stats"), call.pop("out"), **call)
    assert str(caught.value) == message
    assert sorted(os.listdir(api_place)) == ["d.jsonl", "s.parquet"]


SCORE_CALLS = {
    "members='4'": (dict(config=gf.ScoreConfig(members="4")),
                    "--members must be a whole number, got str '4'"),
    "lr=None": (dict(config=gf.ScoreConfig(lr=None)), "--lr must be a number, got NoneType None"),
    "a dict as config": (dict(config={"members": 2}), "config must be a ScoreConfig, got dict"),
    "a number as --out": (dict(out=3.5), "the statistics table (--out) must be a path (a "
                                         "string or a Path), got float 3.5"),
    "limit=0": (dict(limit=0), "--limit must be at least 1, got 0"),
    "checkpoint_every=True": (dict(checkpoint_every=True),
                              "--checkpoint-every must be a whole number, got bool True"),
}


@pytest.mark.parametrize("case", list(SCORE_CALLS))
def test_score_answers_a_wrong_argument_with_a_gradfilter_error(api_place, case, gpt2_proxy):
    arguments, message = SCORE_CALLS[case]
    call = {"data": "d.jsonl", "out": "t.parquet",
            "config": gf.ScoreConfig(proxy=gpt2_proxy, device="cpu"), "method": "length",
            **arguments}
    with pytest.raises(gf.GradfilterError) as caught:
        gf.score(call.pop("data"), call.pop("out"), call.pop("config"), progress=False, **call)
    assert str(caught.value) == message
    assert sorted(os.listdir(api_place)) == ["d.jsonl", "s.parquet"]


# --- JSON(L) to Parquet or a Hugging Face directory in record batches ------------------------

def _records(n: int) -> list[dict]:
    """Records whose schema only the later ones complete: a field null at first, then text; a
    number that is whole at first, then not; a field that appears late."""
    records = []
    for i, record in enumerate(alpaca_records(n)):
        record["note"] = None if i < 9 else f"note {i}"
        record["weight"] = i if i < 9 else i + 0.5
        if i >= 13:
            record["extra"] = {"k": i}
        records.append(record)
    return records


@pytest.mark.parametrize("name", ["d.jsonl", "d.json"])
@pytest.mark.parametrize("order", ["input", "score"])
@pytest.mark.parametrize("out_format", ["parquet", "hf"])
def test_json_records_go_to_arrow_in_batches_holding_no_record(tmp_path, monkeypatch,
                                                               records_alive, name, order,
                                                               out_format):
    from gradfilter.data import batched

    monkeypatch.setattr(batched, "BATCH_ROWS", 4)
    records = _records(17)
    data = tmp_path / name
    if name.endswith(".jsonl"):
        write_jsonl(data, records)
    else:
        data.write_text(json.dumps(records, indent=1), encoding="utf-8")
    scores = np.random.default_rng(1).standard_normal(17)
    out = tmp_path / "subset"
    if out_format == "hf":  # streamed into the save_to_disk layout, not copied from a mapped file
        import datasets

        monkeypatch.setattr(datasets.Dataset, "from_file", _not_called)
    subset = gf.select(data, scores, out, ratio=0.9, order=order, out_format=out_format,
                       score_field="s")
    assert len(records_alive) >= 17 and max(records_alive) <= 1  # no record is held
    chosen = subset.in_order(order)
    schema = pa.schema([*((name, pa.string()) for name in ("instruction", "input", "output",
                                                           "note")),
                        ("weight", pa.float64()), ("extra", pa.struct([("k", pa.int64())])),
                        ("s", pa.float64())])  # the keys of every record, not the first's only
    expected = pa.Table.from_pylist([{**records[i], "s": float(scores[i])} for i in chosen],
                                    schema=schema)
    if out_format == "parquet":
        written = pq.read_table(out)
    else:
        import datasets

        written = datasets.load_from_disk(str(out)).data.table
    assert written.schema.remove_metadata() == expected.schema
    assert written.to_pylist() == expected.to_pylist()
    assert sorted(os.listdir(tmp_path)) == [name, "subset", "subset.run.json"]


def _not_called(*args, **kwargs):
    raise AssertionError("the batches were copied through a memory-mapped stream file")


def test_a_hf_layout_of_other_files_is_written_by_datasets_itself(tmp_path, monkeypatch):
    """Where save_to_disk lays out anything but one .arrow data file (another `datasets`
    version), the batches go through a stream file that `datasets` copies: same rows."""
    import datasets

    from gradfilter.data import batched

    monkeypatch.setattr(batched, "BATCH_ROWS", 2)
    save, laid_out = datasets.Dataset.save_to_disk, []

    def save_with_a_second_file(self, path, **kwargs):
        save(self, path, **kwargs)
        if not laid_out:  # the one-row layout only
            laid_out.append(path)
            state = json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))
            state["_data_files"].append({"filename": "data-00001-of-00002.arrow"})
            (Path(path) / "state.json").write_text(json.dumps(state), encoding="utf-8")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save_with_a_second_file)
    records = alpaca_records(7)
    data = write_jsonl(tmp_path / "d.jsonl", records)
    out = tmp_path / "subset"
    subset = gf.select(data, np.arange(7.0), out, ratio=1.0, out_format="hf")
    assert laid_out
    written = datasets.load_from_disk(str(out))
    assert [row["instruction"] for row in written] == [
        records[i]["instruction"] for i in subset.in_order("input")]
    assert sorted(os.listdir(tmp_path)) == ["d.jsonl", "subset", "subset.run.json"]


def test_records_that_fit_no_schema_are_refused_and_nothing_is_left(tmp_path, monkeypatch):
    from gradfilter.data import batched

    monkeypatch.setattr(batched, "BATCH_ROWS", 2)
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b", "x": 1},
                                              {"instruction": "c", "output": "d", "x": 2},
                                              {"instruction": "e", "output": "f", "x": "two"}])
    with pytest.raises(gf.GradfilterError, match="the records do not fit one Arrow schema"):
        gf.select(data, np.array([1.0, 2.0, 3.0]), tmp_path / "o.parquet", ratio=1.0,
                  out_format="parquet")
    assert os.listdir(tmp_path) == ["d.jsonl"]


def test_a_full_disk_while_spilling_names_the_output_and_leaves_nothing(tmp_path, monkeypatch):
    from gradfilter.data import batched

    def spill_on_a_full_disk(records, rank, chosen, spill, *args):
        spill.write(b'{"instruction": "a"')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(batched, "_spill", spill_on_a_full_disk)
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(3))
    out = tmp_path / "new" / "o.parquet"
    with pytest.raises(gf.GradfilterError) as caught:
        gf.select(data, np.array([1.0, 2.0, 3.0]), out, ratio=1.0, out_format="parquet")
    assert str(caught.value) == f"cannot write {out}: No space left on device"
    assert os.listdir(tmp_path) == ["d.jsonl"]
