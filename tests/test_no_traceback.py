"""No input ends in a traceback: each malformed input gets one line that says what was
expected and what was found, exit 2; where a library raises something unforeseen, the line
names it and `--debug` (or GRADFILTER_DEBUG=1) shows the traceback with its cause."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, run_cli, write_json, write_jsonl, write_records_as

DEPTH = 100_000  # far past Python's recursion limit
TINY = ["--members", "2", "--lora-rank", "2", "--batch-size", "4", "--device", "cpu", "--quiet"]
TOO_DEEP = "JSON nested too deeply"


def _one_line(code: int, err: str) -> str:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# --- deep nesting ----------------------------------------------------------------------------

def _deep_record() -> str:
    return '{"instruction": "a", "output": "b", "x": ' + "[" * DEPTH + "]" * DEPTH + "}"


DEEP = {
    "whole file": ("d.json", "[" * DEPTH + "]" * DEPTH, "d.json: record 0: " + TOO_DEEP),
    "in an array record": ("d.json", f'[{{"instruction": "a", "output": "b"}}, {_deep_record()}]',
                           "d.json: record 1: " + TOO_DEEP),
    "in a JSONL line": ("d.jsonl", '{"instruction": "a", "output": "b"}\n' + _deep_record(),
                        "d.jsonl: line 2 (record 1): " + TOO_DEEP),
}


@pytest.mark.parametrize("case", list(DEEP))
@pytest.mark.parametrize("command", ["inspect", "select"])
def test_deep_nesting_is_one_line(tmp_path, case, command):
    name, text, expected = DEEP[case]
    data = tmp_path / name
    data.write_text(text)
    pq.write_table(pa.table({"gsnr": [1.0, 2.0]}), tmp_path / "s.parquet")
    args = ["--stats", tmp_path / "s.parquet", "--count", "1", "--out", tmp_path / "o.json"]
    code, out, err = run_cli(command, data, *(args if command == "select" else []))
    if command == "inspect" and name.endswith(".jsonl"):  # a line is one problem, not a stop
        assert code == 0, err
        assert expected in out and "1 problem\n" in out
    else:
        assert expected in _one_line(code, err)
        assert not (tmp_path / "o.json").exists()


def test_deep_jsonl_line_is_an_unscored_row_with_skip_bad_records(tmp_path, gpt2_proxy):
    data = tmp_path / "d.jsonl"
    write_jsonl(data, alpaca_records(3))
    data.write_text(data.read_text() + _deep_record() + "\n")
    out = tmp_path / "s.parquet"
    code, _, err = run_cli("score", data, "--out", out, "--method", "length", "--proxy",
                           gpt2_proxy, "--skip-bad-records", "--quiet")
    assert code == 0, err
    reasons = pq.read_table(out).column("skip_reason").to_pylist()
    assert reasons[:3] == [None] * 3 and TOO_DEEP in reasons[3]


# --- a file or a directory where a model is expected -----------------------------------------

def _hf_dataset(path: Path) -> Path:
    import datasets

    datasets.Dataset.from_list(alpaca_records(3)).save_to_disk(str(path))
    return path


PROXIES = {
    "a JSON dataset": (lambda t: write_json(t / "p.json", alpaca_records(2)),
                       "found a JSON file (a dataset?)"),
    "a Parquet file": (lambda t: write_records_as(t / "p.parquet", alpaca_records(2)),
                       "found a Parquet file"),
    "a .gguf that is not GGUF": (lambda t: write_json(t / "p.gguf", []),
                                 "found a file that does not start with the GGUF magic bytes"),
    "an empty directory": (lambda t: (t / "empty").mkdir() or t / "empty",
                           "found a directory without config.json (holding: nothing)"),
    "a dataset directory": (lambda t: _hf_dataset(t / "ds"),
                            "found a Hugging Face dataset directory (a dataset, not a model)"),
    "a missing path": (lambda t: t / "no" / "model", "no such file or directory"),
}


@pytest.mark.parametrize("case", list(PROXIES))
def test_proxy_that_is_not_a_model_is_one_line(tmp_path, case):
    make, found = PROXIES[case]
    proxy = make(tmp_path)
    data = write_json(tmp_path / "d.json", alpaca_records(4))
    code, _, err = run_cli("score", data, "--out", tmp_path / "s.parquet", "--proxy", proxy,
                           *TINY)
    err = _one_line(code, err)
    assert err.startswith(f"error: cannot load the model {proxy}: ") and found in err
    if case != "a missing path":
        assert "expected a model directory (with config.json), a .gguf file or a hub model " \
               "id" in err
    assert not (tmp_path / "s.parquet").exists()


# --- a dataset, or a broken file, where a statistics table is expected -----------------------

def _parquet_bytes(records: list[dict]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(records), sink)
    return sink.getvalue().to_pybytes()


def _table_bytes() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"gsnr": [float(i) for i in range(4)]}), sink)
    return sink.getvalue().to_pybytes()


STATS = {
    "a JSONL dataset": (lambda: "".join(json.dumps(r) + "\n" for r in alpaca_records(4))
                        .encode(), "not a Parquet statistics table (the file `gradfilter score` "
                        "writes): found JSON Lines text (a dataset?)"),
    "a JSON dataset": (lambda: json.dumps(alpaca_records(4)).encode(),
                       "found a JSON array (a dataset?)"),
    "a Parquet dataset": (lambda: _parquet_bytes(alpaca_records(4)),
                          "not a statistics table: it holds no scores: neither sqnorm columns "
                          "nor a baseline's score column; its columns: instruction, input, "
                          "output (a dataset?)"),
    "a foreign Parquet file": (lambda: _parquet_bytes([{"x": 1, "y": "a"}] * 4),
                               "its columns: x, y"),
    "a truncated table": (lambda: _table_bytes()[:-40],
                          "found a Parquet file cut off before its footer (truncated?)"),
    "a score column of lists": (lambda: _parquet_bytes([{"gsnr": [1.0]}] * 4),
                                "column 'gsnr' holds list<element: double>, expected numbers"),
}


@pytest.mark.parametrize("case", list(STATS))
@pytest.mark.parametrize("utility", [None, "gsnr", "drop"])
def test_stats_that_are_not_a_table_is_one_line(tmp_path, case, utility):
    make, found = STATS[case]
    stats = tmp_path / "stats.parquet"
    stats.write_bytes(make())
    data = write_json(tmp_path / "d.json", alpaca_records(4))
    code, _, err = run_cli("select", data, "--stats", stats, "--count", "2", "--out",
                           tmp_path / "o.json", *(["--utility", utility] if utility else []))
    err = _one_line(code, err)
    assert err.startswith(f"error: {stats}: ") and found in err
    assert not (tmp_path / "o.json").exists()


PARQUET_DATA = {
    "truncated": (lambda: _parquet_bytes(alpaca_records(50))[:-100],
                  "not a readable Parquet file: found a Parquet file cut off before its footer"),
    "JSON named .parquet": (lambda: json.dumps(alpaca_records(2)).encode(),
                            "not a readable Parquet file: found a JSON array (a dataset?)"),
    "foreign": (lambda: _parquet_bytes([{"x": 1, "y": "a"}] * 4),
                "record 0: cannot tell the format from keys ['x', 'y']"),
}


@pytest.mark.parametrize("case", list(PARQUET_DATA))
def test_parquet_data_that_cannot_be_read_is_one_line(tmp_path, case):
    make, found = PARQUET_DATA[case]
    data = tmp_path / "d.parquet"
    data.write_bytes(make())
    code, _, err = run_cli("inspect", data)
    assert found in _one_line(code, err)


# --- other inputs that used to end in a traceback --------------------------------------------

def test_a_role_that_is_not_a_string_is_one_line(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"conversations": [
        {"from": ["human"], "value": "hi"}, {"from": "gpt", "value": "hello"}]}])
    code, _, err = run_cli("select", data, "--stats", tmp_path / "none.parquet", "--count", "1",
                           "--out", tmp_path / "o.jsonl")
    _one_line(code, err)
    code, out, err = run_cli("inspect", data)
    assert code == 0, err
    assert "record 0: field 'conversations[0].from': unknown role ['human']" in out


def test_a_plugin_that_is_not_there_is_one_line(tmp_path, gpt2_proxy):
    data = write_json(tmp_path / "d.json", alpaca_records(4))
    code, _, err = run_cli("bench", "noise", data, "--out-dir", tmp_path / "b", "--plugin",
                           "no_such_plugin_module", "--proxy", gpt2_proxy, *TINY)
    assert "--plugin no_such_plugin_module: no module named" in _one_line(code, err)
    assert not (tmp_path / "b").exists()


def test_a_table_output_on_an_existing_directory_is_one_line(tmp_path, gpt2_proxy):
    data = write_json(tmp_path / "d.json", alpaca_records(4))
    (tmp_path / "out").mkdir()
    code, _, err = run_cli("score", data, "--out", tmp_path / "out", "--method", "length",
                           "--proxy", gpt2_proxy, "--quiet")
    assert "is an existing directory; it is written as a file" in _one_line(code, err)


# --- the unforeseen: one line by default, the traceback with --debug -------------------------

@pytest.fixture
def library_bug(monkeypatch):
    """A library raising what nobody foresaw, with a cause behind it."""
    from gradfilter.data import inspect

    def broken(*args, **kwargs):
        try:
            {}["key"]
        except KeyError as exc:
            raise RuntimeError("the library\nbroke") from exc

    monkeypatch.setattr(inspect, "inspect_dataset", broken)


def test_an_unforeseen_error_is_one_line_naming_debug(tmp_path, library_bug, monkeypatch):
    monkeypatch.delenv("GRADFILTER_DEBUG", raising=False)
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(2))
    code, _, err = run_cli("inspect", data)
    assert err == ("error: RuntimeError: the library broke (run with --debug for the "
                   "traceback)\n")
    _one_line(code, err)


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback_and_its_cause(tmp_path, library_bug, monkeypatch, how):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(2))
    if how == "environment":
        monkeypatch.setenv("GRADFILTER_DEBUG", "1")
    code, _, err = run_cli(*(["--debug"] if how == "flag" else []), "inspect", data)
    assert code == 2
    assert "Traceback" in err and "KeyError: 'key'" in err and "RuntimeError: the library" in err
    assert err.endswith("error: RuntimeError: the library broke\n")


def test_debug_shows_the_cause_a_one_line_error_hides(tmp_path, monkeypatch):
    """`raise GradfilterError(...) from None` hides the library's exception by default only."""
    monkeypatch.delenv("GRADFILTER_DEBUG", raising=False)
    data = tmp_path / "d.json"
    data.write_bytes(b'[{"instruction": "caf\xe9", "output": "b"}]')
    code, _, plain = run_cli("inspect", data)
    assert plain == f"error: {data}: not UTF-8 text (byte 0xe9 in a chunk read)\n"
    _one_line(code, plain)
    code, _, err = run_cli("--debug", "inspect", data)
    assert code == 2 and "Traceback" in err and "UnicodeDecodeError" in err
    assert err.endswith(plain)
