"""A command that cannot write its outputs says so before it loads a model (issue 35, point 2):
every output of score, run, bench and demo is probed first (its directory exists or can be
made, a file can be created and removed there, there is room for a small file), and a failure
is one line naming the option and the path.

Unwritable places are made in ways that hold for root too (root ignores a directory's mode):
a path under a regular file, a name too long for the file system, a file system reported full.
Loading a model or tokenizer fails these tests: the error must come first.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import alpaca_records, run_cli, write_jsonl

from gradfilter import paths
from gradfilter.scoring import proxy, score

TINY = ["--members", "2", "--lora-rank", "2", "--batch-size", "4", "--device", "cpu", "--quiet"]


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A working directory with a dataset and a regular file named `afile`; loading a model or
    a tokenizer is an error."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "data.jsonl", alpaca_records(6))
    (tmp_path / "afile").write_text("a regular file\n")

    def loaded(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the outputs were probed")

    for module in (proxy, score):
        monkeypatch.setattr(module, "load_model", loaded)
        monkeypatch.setattr(module, "load_tokenizer", loaded)
    return tmp_path


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _fails_first(root: Path, *args: object) -> str:
    before = _listing(root)
    code, _, err = run_cli(*args)
    assert code == 2, err
    assert err.startswith("error: cannot write ") and err.count("\n") == 1, err
    assert _listing(root) == before  # no probe file, no directory made
    return err


UNDER_A_FILE = {
    "score --out": (["score", "data.jsonl", "--out", "afile/s.parquet"],
                    "the statistics table (--out afile/s.parquet)"),
    "score --checkpoint-dir": (["score", "data.jsonl", "--out", "s.parquet", "--checkpoint-dir",
                                "afile/ck"],
                               "the checkpoint directory (--checkpoint-dir afile/ck)"),
    "score --save-adapters": (["score", "data.jsonl", "--out", "s.parquet", "--save-adapters",
                               "afile/ad"], "the adapters directory (--save-adapters afile/ad)"),
    "run --out": (["run", "data.jsonl", "--out", "afile/sub/subset.jsonl"],  # its table first
                  "the statistics table (default --stats afile/sub/subset.jsonl.stats.parquet)"),
    "run --stats": (["run", "data.jsonl", "--out", "subset.jsonl", "--stats", "afile/s.parquet"],
                    "the statistics table (--stats afile/s.parquet)"),
    "bench noise --out-dir": (["bench", "noise", "data.jsonl", "--out-dir", "afile/bench"],
                              "the output directory (--out-dir afile/bench)"),
    "bench speed --out": (["bench", "speed", "data.jsonl", "--out", "afile/speed.json"],
                          "the figures (--out afile/speed.json)"),
}


@pytest.mark.parametrize("case", list(UNDER_A_FILE))
def test_an_output_under_a_regular_file_fails_before_the_model_loads(place, gpt2_proxy, case):
    args, label = UNDER_A_FILE[case]
    err = _fails_first(place, *args, "--proxy", gpt2_proxy, *TINY)
    assert err == f"error: cannot write {label}: {place / 'afile'} is a file, not a directory\n"


def test_the_demo_probes_its_directory_first(place):
    from gradfilter.demo import demo_data

    try:
        demo_data()
    except Exception as exc:  # the demo's data package is not installed here
        pytest.skip(str(exc))
    err = _fails_first(place, "demo", "--out-dir", "afile/demo", "--quiet")
    assert "(--out-dir afile/demo" in err and "is a file, not a directory" in err


def test_a_full_file_system_fails_before_the_model_loads(place, gpt2_proxy, monkeypatch):
    statvfs = os.statvfs

    def full(path):
        found = statvfs(path)
        return os.statvfs_result((*found[:4], 0, *found[5:]))  # f_bavail: no block left

    monkeypatch.setattr(paths.os, "statvfs", full)
    err = _fails_first(place, "score", "data.jsonl", "--out", "sub/s.parquet", "--proxy",
                       gpt2_proxy, *TINY)
    assert err == (f"error: cannot write the statistics table (--out sub/s.parquet): no room "
                   f"left on the file system of {place} (0 bytes free)\n")


def test_a_read_only_directory_fails_before_the_model_loads(place, gpt2_proxy):
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only directory (the tests above cover root)")
    (place / "ro").mkdir()
    (place / "ro").chmod(0o555)
    try:
        err = _fails_first(place, "score", "data.jsonl", "--out", "ro/s.parquet", "--proxy",
                           gpt2_proxy, *TINY)
    finally:
        (place / "ro").chmod(0o755)
    assert err == (f"error: cannot write the statistics table (--out ro/s.parquet): "
                   f"{place / 'ro'}: Permission denied\n")


def test_a_name_too_long_for_the_file_system_fails_before_the_model_loads(place, gpt2_proxy):
    name = "x" * 300 + ".parquet"
    err = _fails_first(place, "score", "data.jsonl", "--out", name, "--proxy", gpt2_proxy, *TINY)
    assert err == (f"error: cannot write the statistics table (--out {name}): the name "
                   "xxxxxxxxxxxxxxxxxxxx...xxxxxxxx.parquet is 308 bytes, over the 255 its file "
                   "system allows\n")
