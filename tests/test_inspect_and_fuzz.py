"""`inspect` on a messy file, and random structures fed to every loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradfilter as gf
from gradfilter.data import readers
from gradfilter.data.inspect import inspect_dataset


def test_inspect_reports_counts_and_every_problem(tmp_path):
    records = [
        {"id": "a", "conversations": [{"from": "human", "value": "hi"},
                                      {"from": "gpt", "value": "hello"}]},
        {"id": "a", "conversations": []},
        {"id": "b", "conversations": [{"from": "human", "value": "only a question"}]},
        {"id": "c", "conversations": [{"from": "robot", "value": "?"}]},
        {"id": "d", "conversations": [{"from": "human", "value": "q"},
                                      {"from": "gpt", "value": "a"},
                                      {"from": "human", "value": "and?"}]},
    ]
    path = tmp_path / "messy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    found = inspect_dataset(path)
    assert (found.records, found.format, found.container) == (5, "sharegpt", "jsonl")
    assert found.roles == {"user": 4, "assistant": 2}
    problems = "\n".join(found.problems)
    assert "record 1: field 'id': duplicate of record 0" in problems
    assert "record 1: empty conversation" in problems
    assert "record 2: no assistant turn" in problems
    assert "record 3: field 'conversations[0].from': unknown role 'robot'" in problems
    assert "record 4: ends on a user turn" in problems
    assert len(found.problems) == 5
    result = subprocess.run(
        [sys.executable, "-c", "from gradfilter.cli import main; main()", "inspect", str(path)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "5 records, format sharegpt" in result.stdout and "5 problems" in result.stdout


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["instruction", "input", "output", "conversations", "from", "value",
                         "messages", "role", "content", "prompt", "completion", "x"]),
        inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(json_values, max_size=5), container=st.sampled_from(["json", "jsonl"]),
       cut=st.integers(min_value=0, max_value=400))
def test_loaders_give_a_clear_error_or_a_correct_parse(tmp_path, records, container, cut):
    path = tmp_path / f"fuzz.{container}"
    if container == "json":
        text = json.dumps(records)
    else:
        text = "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(text[: max(1, len(text) - cut % (len(text) + 1))], encoding="utf-8")
    try:
        dataset = gf.read_dataset(path)
        for record in dataset.records:
            assert json.loads(record.raw) == record.data
            turns = dataset.turns(record)
            assert all(isinstance(turn.text, str) for turn in turns)
    except gf.GradfilterError as exc:
        assert "\n" not in str(exc) and str(exc)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(json_values.map(lambda v: json.dumps(v).encode()),
                                st.binary(max_size=12)), max_size=6))
def test_skipping_reader_keeps_every_line_in_its_place(tmp_path, lines):
    """With skip_bad_records, each non-blank JSONL line is one record at its own index: the
    object it holds, or the reason it cannot be read; nothing else stops the read."""
    path = tmp_path / "fuzz.jsonl"
    lines = [b'{"first": 0}', *(line.replace(b"\n", b" ") for line in lines)]  # a JSONL file
    path.write_bytes(b"\n".join(lines) + b"\n")
    kept = [line.rstrip(b"\r") for line in lines if line.rstrip(b"\r").strip()]
    read = list(readers.iter_records(path, skip_bad_records=True))
    assert [r.index for r in read] == list(range(len(kept)))
    for record, line in zip(read, kept, strict=True):
        if record.error is None:
            assert record.raw == line.decode("utf-8")
            assert isinstance(record.data, dict) and json.loads(record.raw) == record.data
        else:
            assert record.data == {} and "\n" not in record.error
            assert f"(record {record.index})" in record.error


arrow_rows = st.lists(st.fixed_dictionaries(
    {}, optional={key: st.one_of(st.none(), st.text(max_size=6), st.integers(-5, 5),
                                 st.lists(st.fixed_dictionaries(
                                     {}, optional={"from": st.text(max_size=5),
                                                   "value": st.none() | st.text(max_size=5),
                                                   "role": st.sampled_from(["user", "x"]),
                                                   "content": st.text(max_size=5)}),
                                     max_size=3))
                  for key in ("instruction", "input", "output", "conversations", "messages",
                              "prompt", "completion")}), max_size=4)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=arrow_rows, container=st.sampled_from(["parquet", "hf"]))
def test_arrow_loaders_give_a_clear_error_or_a_correct_parse(tmp_path, rows, container):
    import tempfile

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from hypothesis import assume

    fresh = Path(tempfile.mkdtemp(dir=tmp_path))  # hypothesis reuses tmp_path across examples
    path = fresh / ("fuzz.parquet" if container == "parquet" else "fuzz")
    try:
        table = pa.Table.from_pylist(rows)
        if container == "parquet":
            pq.write_table(table, path)
        else:
            datasets.Dataset(table).save_to_disk(str(path))
    except pa.ArrowException:
        assume(False)  # rows Arrow or Parquet cannot hold are no test of our loader
    try:
        dataset = gf.read_dataset(path)
        assert [r.data for r in dataset.records] == table.to_pylist()
        for record in dataset.records:
            turns = dataset.turns(record)
            assert all(isinstance(turn.text, str) for turn in turns)
    except gf.GradfilterError as exc:
        assert "\n" not in str(exc) and str(exc)


def test_inspect_streams_holding_no_record(tmp_path, records_alive):
    from conftest import sharegpt_records, write_jsonl

    path = write_jsonl(tmp_path / "d.jsonl", sharegpt_records(25))
    found = inspect_dataset(path)
    assert found.records == 25 and len(records_alive) == 25 and max(records_alive) <= 1
