"""Reading JSON arrays in chunks and JSONL: exact source text, order, truncation recovery."""

from __future__ import annotations

import json

import pytest
from conftest import alpaca_records, sharegpt_records, write_json

from gradfilter import GradfilterError
from gradfilter.data import readers
from gradfilter.data.readers import ReadReport, iter_records


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(readers, "_CHUNK_CHARS", 7)


def test_json_array_read_in_small_chunks_gives_every_record_exactly(tmp_path, small_chunks):
    records = sharegpt_records(9)
    path = write_json(tmp_path / "d.json", records)
    read = list(iter_records(path))
    assert [r.data for r in read] == records
    assert [r.index for r in read] == list(range(9))
    assert all(json.loads(r.raw) == r.data and r.raw in path.read_text() for r in read)


def test_json_array_cut_off_mid_record_recovers_complete_records(tmp_path, small_chunks):
    text = json.dumps(alpaca_records(5), ensure_ascii=False, indent=2)
    cut = text.index('"instruction": "Give 3')  # inside record 3
    path = tmp_path / "cut.json"
    path.write_text(text[:cut], encoding="utf-8")
    report = ReadReport()
    read = list(iter_records(path, report))
    assert [r.data for r in read] == alpaca_records(5)[:3]
    assert len(report.warnings) == 1
    warning = report.warnings[0]
    assert "after 3 complete records" in warning
    start = int(warning.split("starting at byte ")[1].split()[0])
    record_start = text.rindex("{", 0, cut)
    assert start == len(text[:record_start].encode())


def test_bom_and_jsonl_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\ufeff" + '{"instruction": "a", "output": "b"}\n\n{"instruction": "c",'
                    ' "output": "d"}\n', encoding="utf-8")
    read = list(iter_records(path))
    assert [r.data["instruction"] for r in read] == ["a", "c"]
    assert read[0].raw == '{"instruction": "a", "output": "b"}'


def test_malformed_jsonl_line_names_line_and_record(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n', encoding="utf-8")
    with pytest.raises(GradfilterError, match=r"d.jsonl: line 2 \(record 1\): malformed JSON"):
        list(iter_records(path))


def test_empty_file_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("  \n", encoding="utf-8")
    with pytest.raises(GradfilterError, match="the file is empty"):
        list(iter_records(path))


def test_bytes_that_are_not_utf8_are_a_clear_error(tmp_path):
    path = tmp_path / "latin1.jsonl"
    line = '{"instruction": "caf\u00e9", "output": "b"}\n'
    path.write_bytes(('{"instruction": "a", "output": "b"}\n' + line).encode("latin-1"))
    offset = len('{"instruction": "a", "output": "b"}\n{"instruction": "caf')
    with pytest.raises(GradfilterError, match=(
            rf"latin1.jsonl: line 2 \(record 1\): not UTF-8 text \(byte 0xe9 at byte {offset} ")):
        list(iter_records(path))
    array = tmp_path / "latin1.json"
    array.write_bytes(("[" + line + "]").encode("latin-1"))
    with pytest.raises(GradfilterError, match=r"latin1.json: not UTF-8 text \(byte 0xe9"):
        list(iter_records(array))


@pytest.mark.parametrize("suffix", ["json", "json.gz"])
def test_truncation_offset_counts_the_byte_order_mark(tmp_path, small_chunks, suffix):
    import gzip

    text = json.dumps(alpaca_records(4), ensure_ascii=False, indent=2)
    cut = text.index('"instruction": "Give 2')
    data = "\ufeff".encode() + text[:cut].encode("utf-8")
    path = tmp_path / f"bom.{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    report = ReadReport()
    assert [r.data for r in iter_records(path, report)] == alpaca_records(4)[:2]
    start = int(report.warnings[0].split("starting at byte ")[1].split()[0])
    assert data[start:start + 1] == b"{"
    assert start == 3 + len(text[: text.rindex("{", 0, cut)].encode("utf-8"))


def test_skip_bad_records_keeps_unreadable_lines_in_place(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [b'{"instruction": "a", "output": "b"}', b'{"instruction": ', b"42", b"",
             '{"instruction": "caf\u00e9", "output": "b"}'.encode("latin-1"),
             b'{"instruction": "c", "output": "d"}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = ReadReport()
    read = list(iter_records(path, report, skip_bad_records=True))
    assert [r.index for r in read] == [0, 1, 2, 3, 4]
    assert [r.error is None for r in read] == [True, False, False, False, True]
    assert read[1].error.endswith("d.jsonl: line 2 (record 1): malformed JSON: Expecting value")
    assert read[2].error.endswith("line 3 (record 2): is not a JSON object (a int)")
    assert "line 5 (record 3): not UTF-8 text (byte 0xe9" in read[3].error
    assert read[4].data == {"instruction": "c", "output": "d"}
    assert report.skipped == [read[1].error, read[2].error, read[3].error]
    with pytest.raises(GradfilterError, match=r"line 2 \(record 1\): malformed JSON"):
        list(iter_records(path))
    array = tmp_path / "d.json"
    array.write_text('[{"instruction": "a", "output": "b"}, 42, {"instruction": "c", '
                     '"output": "d"}]', encoding="utf-8")
    read = list(iter_records(array, skip_bad_records=True))
    assert [(r.index, r.error is None) for r in read] == [(0, True), (1, False), (2, True)]
    assert read[1].error.endswith("d.json: record 1: is not a JSON object (a int)")
    with pytest.raises(GradfilterError, match=r"d.json: record 1: is not a JSON object"):
        list(iter_records(array))
