"""A finished run never fails in its printout, and text that is not valid Unicode is a bad
record (issue 35, point 3).

A console that cannot show a character (PYTHONIOENCODING=ascii, a Windows code page) prints a
replacement and the exit code stays 0 once the outputs are written. A string holding a lone
UTF-16 surrogate (`"x\\ud800y"`: legal JSON, no UTF-8 for it) is flagged by the readers, naming
record and field: `inspect` counts it, `--skip-bad-records` skips it with that reason, and
otherwise it is a one-line error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, run_cli, write_jsonl

import gradfilter as gf

SURROGATE = "lone surrogate \\ud800 (not valid Unicode)"


def test_an_ascii_console_prints_replacements_and_the_run_succeeds(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(6))  # café, 日本語 in records 0, 3
    pq.write_table(pa.table({"gsnr": np.arange(6, dtype=np.float64)}), tmp_path / "s.parquet")
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", "from gradfilter.cli import main; main()", "select", str(data),
         "--stats", str(tmp_path / "s.parquet"), "--ratio", "1.0", "--out",
         str(tmp_path / "o.jsonl")], capture_output=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr.decode("ascii", "replace")
    assert b"user:  Give 3 tips for staying healthy" in result.stdout
    assert b"UnicodeEncodeError" not in result.stderr
    assert (tmp_path / "o.jsonl").read_bytes() == data.read_bytes()
    assert (tmp_path / "o.jsonl.run.json").is_file()


def _with_surrogate(path: Path, container: str) -> Path:
    """Three Alpaca records, the second holding a lone surrogate in its instruction, and a
    fourth in `messages` form with one in a turn (a valid escaped pair elsewhere is fine)."""
    records = [json.dumps(r) for r in alpaca_records(3)]
    records[1] = records[1].replace('"Give 1', '"Give \\ud800 1', 1)
    records[0] = records[0].replace('"Give 0', '"Give \\ud83d\\ude00 0', 1)  # a pair: fine
    if container == "jsonl":
        path.write_text("\n".join(records) + "\n", encoding="utf-8")
    else:
        path.write_text("[" + ",\n".join(records) + "]", encoding="utf-8")
    return path


WHERE = {"jsonl": "line 2 (record 1)", "json": "record 1"}


@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_inspect_counts_a_lone_surrogate_as_a_problem(tmp_path, container):
    data = _with_surrogate(tmp_path / f"d.{container}", container)
    code, out, err = run_cli("inspect", data)
    assert code == 0, err
    assert f"  {data}: {WHERE[container]}: field 'instruction': {SURROGATE}\n" in out
    assert "\n1 problem\n" in out


@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_score_stops_on_a_lone_surrogate_with_one_line(tmp_path, gpt2_proxy, container):
    data = _with_surrogate(tmp_path / f"d.{container}", container)
    code, _, err = run_cli("score", data, "--out", tmp_path / "s.parquet", "--method", "length",
                           "--proxy", gpt2_proxy, "--quiet")
    assert code == 2
    assert err == f"error: {data}: {WHERE[container]}: field 'instruction': {SURROGATE}\n"
    assert not (tmp_path / "s.parquet").exists()


def test_skip_bad_records_skips_a_lone_surrogate_with_its_reason(tmp_path, gpt2_proxy):
    data = _with_surrogate(tmp_path / "d.jsonl", "jsonl")
    code, _, err = run_cli("score", data, "--out", tmp_path / "s.parquet", "--method", "length",
                           "--proxy", gpt2_proxy, "--quiet", "--skip-bad-records")
    assert code == 0, err
    reasons = gf.load_stats(tmp_path / "s.parquet").column("skip_reason").to_pylist()
    assert reasons[0] is None and reasons[2] is None
    assert reasons[1] == (f"invalid record: {data}: line 2 (record 1): field 'instruction': "
                          f"{SURROGATE}")


def test_a_lone_surrogate_in_a_turn_names_the_turn(tmp_path):
    data = tmp_path / "m.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, '
                    '{"role": "assistant", "content": "x\\udfffy"}]}\n', encoding="utf-8")
    with pytest.raises(gf.GradfilterError) as caught:
        gf.read_dataset(data)
    assert str(caught.value) == (f"{data}: line 1 (record 0): field 'messages[1].content': "
                                 "lone surrogate \\udfff (not valid Unicode)")
