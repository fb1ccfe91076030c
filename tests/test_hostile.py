"""Hostile input, one test per case of the issue: each is either a documented recovery (in the
summary and the run record) or a one-line error naming file, record and field, exit code 2, no
traceback and nothing written.

Two small scoring runs are shared: one over every case that is recovered without being asked
(a JSON array with a BOM, cut off at the end), one with --skip-bad-records over records and lines
that are errors otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import alpaca_records, run_cli

import gradfilter as gf

MAX_LENGTH = 48
TINY = ["--members", "2", "--epochs", "2", "--lora-rank", "2", "--batch-size", "2",
        "--collect-batch-size", "4", "--max-length", str(MAX_LENGTH), "--device", "cpu",
        "--quiet"]


def _chat(i: int) -> list[dict]:
    return [{"from": "human", "value": f"What is {i} plus {i}?"},
            {"from": "gpt", "value": f"It is {2 * i}."}]


def _message(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Name the number after {i}."},
                         {"role": "assistant", "content": f"{i + 1}"}], "n": i}


def _jsonl(records: list) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _one_line_error(code: int, err: str, data: Path) -> str:
    assert code == 2, err
    assert err.startswith(f"error: {data}: ") and err.endswith("\n") and err.count("\n") == 1
    assert "Traceback" not in err
    return err


# --- Input the reader cannot take at all --------------------------------------------------

UNREADABLE = {
    "malformed JSON": ("d.json", b'[{"instruction": "a", "output": "b"},\n {"instruction": "c" '
                       b'"output": "d"},\n {"instruction": "e", "output": "f"}]',
                       "record 1: malformed JSON: Expecting ',' delimiter"),
    "malformed JSONL line": ("d.jsonl", b'{"instruction": "a", "output": "b"}\n'
                             b'{"instruction": "c", "output": \n',
                             "line 2 (record 1): malformed JSON: Expecting value"),
    "JSONL line that is not an object": ("d.jsonl", b'{"instruction": "a", "output": "b"}\n42\n',
                                         "line 2 (record 1): is not a JSON object (a int)"),
    "bytes that are not UTF-8": ("d.jsonl", b'{"instruction": "a", "output": "b"}\n'
                                 b'{"instruction": "caf\xe9", "output": "b"}\n',
                                 "line 2 (record 1): not UTF-8 text (byte 0xe9 at byte 56 "),
    "empty file": ("d.json", b"", "the file is empty"),
    "file of blanks and a BOM": ("d.jsonl", b"\xef\xbb\xbf \n\n", "the file is empty"),
    "empty list": ("d.json", b"\xef\xbb\xbf[ ]\n", "the dataset holds no records"),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_input_is_one_line_exit_2_and_nothing_written(tmp_path, gpt2_proxy, case):
    name, content, expected = UNREADABLE[case]
    data = tmp_path / name
    data.write_bytes(content)
    code, _, err = run_cli("run", data, "--out", tmp_path / "subset.json", "--proxy", gpt2_proxy,
                           *TINY)
    assert expected in _one_line_error(code, err, data)
    assert list(tmp_path.iterdir()) == [data]


# --- Records that are errors unless --skip-bad-records -------------------------------------

def _bad_message(kind: str) -> dict:
    record = _message(99)
    if kind == "missing field":
        del record["messages"]
    elif kind == "number as content":
        record["messages"][1]["content"] = 42
    elif kind == "null content":
        record["messages"][1]["content"] = None
    elif kind == "unknown role":
        record["messages"][0]["role"] = "robot"
    elif kind == "turns not a list":
        record["messages"] = "hello"
    return record


BAD_RECORDS = {
    "missing field": "field 'messages': is missing",
    "number as content": "field 'messages[1].content': must be a string, got int",
    "null content": "field 'messages[1].content': must be a string, got NoneType",
    "unknown role": "field 'messages[0].role': unknown role 'robot'",
    "turns not a list": "field 'messages': must be a list of turns, got str",
}


@pytest.mark.parametrize("kind", list(BAD_RECORDS))
def test_bad_record_stops_the_run_with_one_line(tmp_path, gpt2_proxy, kind):
    data = tmp_path / "d.jsonl"
    data.write_bytes(_jsonl([_message(0), _message(1), _bad_message(kind), _message(3)]))
    code, _, err = run_cli("run", data, "--out", tmp_path / "subset.jsonl", "--proxy",
                           gpt2_proxy, *TINY)
    assert err == f"error: {data}: record 2: {BAD_RECORDS[kind]}\n"
    _one_line_error(code, err, data)
    assert list(tmp_path.iterdir()) == [data]


def test_alpaca_number_as_output_and_missing_field_stop_the_run(tmp_path, gpt2_proxy):
    records = alpaca_records(4)
    records[1]["output"] = 7
    del records[3]["instruction"]
    data = tmp_path / "a.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    code, _, err = run_cli("score", data, "--out", tmp_path / "t.parquet", "--proxy",
                           gpt2_proxy, *TINY)
    assert err == f"error: {data}: record 1: field 'output': must be a string, got int\n"
    _one_line_error(code, err, data)
    assert list(tmp_path.iterdir()) == [data]


SKIPPED_LINES = [
    (b'{"messages": [{"role": "user", "content": "x"}', "line 6 (record 5): malformed JSON"),
    (b"42", "line 7 (record 6): is not a JSON object (a int)"),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',
     "line 8 (record 7): not UTF-8 text (byte 0xe9"),
]


@pytest.fixture(scope="module")
def skipped_run(tmp_path_factory, gpt2_proxy):
    """A --skip-bad-records run over every bad record kind and every unreadable line kind."""
    tmp = tmp_path_factory.mktemp("skip")
    good = [json.dumps(_message(i)).encode() for i in range(6)]
    bad = {kind: json.dumps(_bad_message(kind)).encode() for kind in BAD_RECORDS}
    lines = [good[0], bad["missing field"], bad["number as content"], bad["null content"],
             bad["unknown role"], *(line for line, _ in SKIPPED_LINES), bad["turns not a list"],
             *good[1:]]
    data = tmp / "d.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp / "subset.jsonl"
    code, stdout, err = run_cli("run", data, "--ratio", "1.0", "--utility", "gsnr", "--out", out,
                                "--skip-bad-records", "--proxy", gpt2_proxy, *TINY)
    assert code == 0, err
    stats = tmp / "subset.jsonl.stats.parquet"
    return {"data": data, "lines": lines, "out": out, "stdout": stdout, "stats": stats,
            "table": gf.load_stats(stats),
            "score_record": json.loads(stats.with_name(stats.name + ".run.json").read_text())}


SKIPPED = {1: BAD_RECORDS["missing field"], 2: BAD_RECORDS["number as content"],
           3: BAD_RECORDS["null content"], 4: BAD_RECORDS["unknown role"],
           **{5 + k: problem for k, (_, problem) in enumerate(SKIPPED_LINES)},
           8: BAD_RECORDS["turns not a list"]}


@pytest.mark.parametrize("index", list(SKIPPED))
def test_skip_bad_records_keeps_each_in_place_unscored_and_listed(skipped_run, index):
    reasons = skipped_run["table"].column("skip_reason").to_pylist()
    assert reasons[index].startswith(f"invalid record: {skipped_run['data']}: ")
    assert SKIPPED[index] in reasons[index]
    assert f"record {index}" in reasons[index]
    assert skipped_run["score_record"]["unscored"][str(index)] == reasons[index]


def test_skip_bad_records_writes_every_other_record_unchanged_in_order(skipped_run):
    table = skipped_run["table"]
    assert table.num_rows == 14
    assert [i for i, r in enumerate(table.column("skip_reason").to_pylist()) if r] == list(SKIPPED)
    good_lines = [line for i, line in enumerate(skipped_run["lines"]) if i not in SKIPPED]
    assert skipped_run["out"].read_bytes() == b"\n".join(good_lines) + b"\n"
    assert "skipped 3 unreadable records (kept in place, unscored)" in skipped_run["stdout"]
    assert "kept 6 of 14 records" in skipped_run["stdout"]


def test_select_streams_past_unreadable_lines(skipped_run, tmp_path):
    """select reads the input again; the lines it cannot read are unscored in the table."""
    out = tmp_path / "again.jsonl"
    code, _, err = run_cli("select", skipped_run["data"], "--stats", skipped_run["stats"],
                                "--ratio", "1.0", "--utility", "gsnr", "--out", out)
    assert code == 0, err
    assert out.read_bytes() == skipped_run["out"].read_bytes()
    record = json.loads(out.with_name(out.name + ".run.json").read_text())
    assert [line.split(": ", 1)[1].split(":")[0] for line in record["unreadable_records"]] == [
        "line 6 (record 5)", "line 7 (record 6)", "line 8 (record 7)"]


# --- Recovered without being asked ----------------------------------------------------------

RECOVERED = [
    {"id": "c0", "conversations": _chat(0)},
    {"id": "c1", "conversations": []},  # empty conversation
    {"id": "c2", "conversations": _chat(2)[:1]},  # no assistant turn
    {"id": "c3", "conversations": [*_chat(3), {"from": "human", "value": "And?"}]},  # ends on user
    {"id": "c0", "conversations": _chat(4)},  # duplicate id of record 0
    {"id": "c5", "conversations": [{"from": "human", "value": "Say it. " * 40 * MAX_LENGTH},
                                   {"from": "gpt", "value": "It."}]},  # prompt >> max_length
    {"id": "c6", "conversations": [{"from": "human", "value": "Count."},
                                   {"from": "gpt", "value": "1 2 3 " * 40 * MAX_LENGTH}]},
    {"id": "c7", "conversations": [{"from": "gpt", "value": "Hello, I am a bot."}]},  # no prompt
    *({"id": f"c{i}", "conversations": _chat(i)} for i in range(8, 12)),
    {"id": "cut", "conversations": _chat(12)},  # cut off mid-record below
]


@pytest.fixture(scope="module")
def recovered_run(tmp_path_factory, gpt2_proxy):
    """One run over a JSON array with a BOM, cut off inside its last record."""
    tmp = tmp_path_factory.mktemp("recover")
    text = json.dumps(RECOVERED, ensure_ascii=False, indent=1)
    cut = text.index('"cut"') + 3
    data = tmp / "d.json"
    data.write_bytes(b"\xef\xbb\xbf" + text[:cut].encode("utf-8"))
    out = tmp / "subset.json"
    code, stdout, err = run_cli("run", data, "--ratio", "1.0", "--utility", "gsnr", "--out", out,
                                "--proxy", gpt2_proxy, *TINY)
    assert code == 0, err
    stats = tmp / "subset.json.stats.parquet"
    table = gf.load_stats(stats)
    return {"data": data, "text": text, "cut": cut, "out": out, "stdout": stdout, "table": table,
            "reasons": table.column("skip_reason").to_pylist(),
            "scores": gf.utility_scores(table, "gsnr"),
            "subset": json.loads(out.read_text(encoding="utf-8")),
            "score_record": json.loads(stats.with_name(stats.name + ".run.json").read_text()),
            "select_record": json.loads(out.with_name(out.name + ".run.json").read_text())}


def _ids(run) -> list[str]:
    return [r["id"] for r in run["subset"]]


def test_cut_off_array_recovers_complete_records_and_warns(recovered_run):
    run = recovered_run
    assert run["table"].num_rows == len(RECOVERED) - 1
    start = 3 + len(run["text"][: run["text"].rindex("{", 0, run["cut"])].encode("utf-8"))
    warning = (f"{run['data']}: the JSON array is cut off after {len(RECOVERED) - 1} complete "
               f"records; the incomplete record starting at byte {start} was skipped")
    assert run["score_record"]["read_warnings"] == [warning]
    assert run["select_record"]["read_warnings"] == [warning]
    assert f"warning: {warning}" in run["stdout"]
    assert run["data"].read_bytes()[start:start + 1] == b"{"


def test_empty_conversation_is_unscored_and_never_selected(recovered_run):
    assert recovered_run["reasons"][1] == "empty conversation"
    assert recovered_run["score_record"]["unscored"]["1"] == "empty conversation"
    assert "c1" not in _ids(recovered_run)


@pytest.mark.parametrize("index", [2, 7])
def test_no_assistant_turn_after_a_prompt_is_unscored(recovered_run, index):
    assert recovered_run["reasons"][index] == "no assistant turn after a prompt"
    unscored = recovered_run["score_record"]["unscored"]
    assert unscored[str(index)] == "no assistant turn after a prompt"
    assert f"c{index}" not in _ids(recovered_run)


def test_ending_on_a_user_turn_is_scored_and_reported(recovered_run):
    assert recovered_run["reasons"][3] is None
    assert np.isfinite(recovered_run["scores"][3])
    assert recovered_run["score_record"]["ends_on_prompt"] == [3]
    assert "1 conversations end on a prompt turn" in recovered_run["stdout"]
    assert RECOVERED[3] in recovered_run["subset"]


def test_duplicate_ids_are_both_kept_and_reported(recovered_run):
    assert recovered_run["score_record"]["duplicate_ids"] == {"4": 0}
    assert "1 records repeat an earlier record's id (all kept)" in recovered_run["stdout"]
    assert [r for r in recovered_run["subset"] if r["id"] == "c0"] == [RECOVERED[0], RECOVERED[4]]


def test_record_many_times_longer_than_max_length(recovered_run):
    run = recovered_run
    assert run["reasons"][5] == "no response tokens within max_length"  # the prompt fills it
    assert run["reasons"][6] is None  # the response is cut to fit, and scored
    truncated = run["table"].column("truncated").to_pylist()
    assert truncated[5] and truncated[6] and sum(truncated) == 2
    assert run["score_record"]["truncated"] == 2
    assert run["table"].column("n_response_tokens")[6].as_py() < MAX_LENGTH
    assert _ids(run) == ["c0", "c3", "c0", "c6", "c8", "c9", "c10", "c11"]
    assert "4 without a finite score" in run["stdout"]
