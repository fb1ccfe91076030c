"""An output never destroys what is at its path (issue 35, point 1): a device node, a FIFO or a
socket at `--out` is refused, never replaced; a symbolic link is written through (its target is
replaced beside the target, the link kept); `-` and a file name ending in '/' are refused; a
long name that is legal works; every error names the output as the user wrote it, never the
hidden temporary file; a subset and its run record move into place together or not at all.

Device nodes and FIFOs are made in a temporary directory, never the machine's /dev.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, run_cli, write_jsonl

import gradfilter as gf
from gradfilter import outputs


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A working directory holding a dataset and a statistics table for it."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "data.jsonl", alpaca_records(6))
    pq.write_table(pa.table({"gsnr": np.arange(6, dtype=np.float64)}), tmp_path / "s.parquet")
    return tmp_path


def _listing(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under `root`: its type bits and, for a regular file, its bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        mode = os.lstat(path).st_mode
        found[str(path.relative_to(root))] = (stat.S_IFMT(mode),
                                              path.read_bytes() if stat.S_ISREG(mode) else None)
    return found


def _select(out: str, *more: str) -> tuple[int, str, str]:
    return run_cli("select", "data.jsonl", "--stats", "s.parquet", "--count", "3", "--out", out,
                   *more)


def _one_line_refusal(root: Path, *args: str) -> str:
    before = _listing(root)
    code, _, err = run_cli(*args)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert ".tmp" not in err
    assert _listing(root) == before
    return err


def _char_device(path: Path) -> Path:
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD (root)")
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays
    return path


SPECIAL = {"character device": (_char_device, "is a character device"),
           "FIFO": (_fifo, "is a FIFO (named pipe)"),
           "socket": (_socket, "is a socket")}


@pytest.mark.parametrize("kind", list(SPECIAL))
@pytest.mark.parametrize("through_a_link", [False, True])
def test_select_refuses_an_out_that_is_not_a_regular_file(place, kind, through_a_link):
    make, said = SPECIAL[kind]
    node = make(place / "node")
    out = "node"
    if through_a_link:
        (place / "link").symlink_to("node")
        out = "link"
    err = _one_line_refusal(place, "select", "data.jsonl", "--stats", "s.parquet", "--count",
                            "3", "--out", out)
    assert err == (f"error: the subset (--out {out}) {said}, not a regular file or directory; "
                   "refusing to replace it (name a new path)\n")
    assert not stat.S_ISREG(os.stat(node).st_mode)


@pytest.mark.parametrize("command", ["score", "run"])
def test_score_and_run_refuse_a_fifo_before_anything_runs(place, gpt2_proxy, command):
    _fifo(place / "fifo")
    err = _one_line_refusal(place, command, "data.jsonl", "--out", "fifo", "--proxy",
                            gpt2_proxy, "--method", "length", "--quiet")
    assert "(--out fifo) is a FIFO (named pipe)" in err


def test_a_device_given_to_the_python_api_is_refused_too(tmp_path):
    """The atomic writer itself refuses, whoever calls it."""
    node = _fifo(tmp_path / "fifo")
    with pytest.raises(gf.GradfilterError, match=r"is a FIFO \(named pipe\), not a regular file"):
        gf.table.write_table(pa.table({"gsnr": [1.0]}), node)
    with pytest.raises(gf.GradfilterError, match="is a FIFO"):
        gf.select(write_jsonl(tmp_path / "d.jsonl", alpaca_records(2)),
                  np.array([1.0, 2.0]), node, count=1)
    assert stat.S_ISFIFO(os.stat(node).st_mode) and sorted(os.listdir(tmp_path)) == [
        "d.jsonl", "fifo"]


def test_a_symbolic_link_is_written_through_and_kept(place):
    (place / "elsewhere").mkdir()
    (place / "elsewhere" / "target.jsonl").write_text("old\n")
    (place / "link.jsonl").symlink_to("elsewhere/target.jsonl")
    (place / "dangling.jsonl").symlink_to("elsewhere/new.jsonl")
    for out, target in (("link.jsonl", "target.jsonl"), ("dangling.jsonl", "new.jsonl")):
        code, _, err = _select(out)
        assert code == 0, err
        assert (place / out).is_symlink()
        written = (place / "elsewhere" / target).read_text().splitlines()
        assert [json.loads(line) for line in written] == [alpaca_records(6)[i] for i in (3, 4, 5)]
        assert (place / f"{out}.run.json").is_file()
    assert sorted(os.listdir(place / "elsewhere")) == ["new.jsonl", "target.jsonl"]


@pytest.mark.parametrize("command", ["select", "score", "run"])
def test_standard_output_is_refused_not_written_as_a_file_named_dash(place, gpt2_proxy, command):
    args = (["select", "data.jsonl", "--stats", "s.parquet", "--count", "3"]
            if command == "select" else
            [command, "data.jsonl", "--proxy", gpt2_proxy, "--method", "length", "--quiet"])
    err = _one_line_refusal(place, *args, "--out", "-")
    assert "(--out -): writing to standard output is not supported" in err
    assert "./- for a file named '-'" in err


@pytest.mark.parametrize("command", ["select", "bench speed"])
def test_a_file_output_ending_in_a_slash_is_refused(place, command):
    args = (["select", "data.jsonl", "--stats", "s.parquet", "--count", "3"]
            if command == "select" else ["bench", "speed", "data.jsonl"])
    err = _one_line_refusal(place, *args, "--out", "sub/")
    role = "the subset" if command == "select" else "the figures"
    assert err == (f"error: {role} (--out sub/) ends in '/', which names a directory; it is "
                   "written as a file (name a file)\n")


REPORT_PAGES = {"select --report": ["select", "data.jsonl", "--stats", "s.parquet", "--count",
                                    "3", "--out", "o.jsonl", "--report"],
                "report --out": ["report", "s.parquet", "--data", "data.jsonl", "--out"]}


@pytest.mark.parametrize("case", list(REPORT_PAGES))
def test_a_report_page_named_dash_or_ending_in_a_slash_is_refused(place, case):
    err = _one_line_refusal(place, *REPORT_PAGES[case], "-")
    option = case.split()[1]
    assert f"the report ({option} -): writing to standard output is not supported (the " \
           "output is written atomically)" in err
    err = _one_line_refusal(place, *REPORT_PAGES[case], "page/")
    assert err == (f"error: the report ({option} page/) ends in '/', which names a directory; "
                   "it is written as a file (name a file)\n")


def test_a_directory_output_may_end_in_a_slash(place):
    datasets = pytest.importorskip("datasets")
    code, _, err = _select("ds/", "--out-format", "hf")
    assert code == 0, err
    assert len(datasets.load_from_disk(str(place / "ds"))) == 3


def test_a_long_legal_name_works(place):
    """240 bytes: the output's temporary name (and its run record's) is shortened."""
    name = "n" * 234 + ".jsonl"
    code, _, err = _select(name)
    assert code == 0, err
    assert len((place / name).read_text().splitlines()) == 3
    assert (place / f"{name}.run.json").is_file()
    assert not [p for p in os.listdir(place) if p.endswith(".tmp")]


def test_a_name_whose_run_record_would_be_too_long_is_refused_up_front(place):
    name = "n" * 244 + ".jsonl"  # 250 bytes: legal, but not its 259-byte run record
    err = _one_line_refusal(place, "select", "data.jsonl", "--stats", "s.parquet", "--count",
                            "3", "--out", name)
    assert err.startswith(f"error: cannot write the run record of --out ({name}.run.json): "
                          "the name nnnnnnnnnnnnnnnnnnnn...n.jsonl.run.json is 259 bytes, "
                          "over the 255 its file system allows")


def test_the_run_record_of_the_table_is_an_input(place):
    (place / "s.parquet.run.json").write_text('{"stage": "score"}\n')
    err = _one_line_refusal(place, "select", "data.jsonl", "--stats", "s.parquet", "--count",
                            "3", "--out", "s.parquet.run.json")
    assert err.startswith("error: refusing to write over an input: the subset (--out "
                          "s.parquet.run.json) is the statistics table's run record")


def _full_disk_on(monkeypatch, cls, method: str) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cls, method, full)


def test_a_full_disk_names_the_output_not_its_temporary_file(place, monkeypatch):
    from gradfilter.data import writers

    _full_disk_on(monkeypatch, writers._TextSink, "write")
    err = _one_line_refusal(place, "select", "data.jsonl", "--stats", "s.parquet", "--count",
                            "3", "--out", "sub/subset.jsonl")
    assert err == "error: cannot write sub/subset.jsonl: No space left on device\n"


def test_a_subset_is_never_left_without_its_run_record(place, monkeypatch):
    """The disk fills after the subset is written, while its run record is: neither moves into
    place, and the earlier pair stays as it was."""
    code, _, err = _select("subset.jsonl")
    assert code == 0, err
    before = _listing(place)
    written = outputs.atomic_write_text

    def record_on_a_full_disk(path: Path, text: str) -> None:
        if not str(path).endswith(".run.json"):
            return written(path, text)
        with outputs.atomic_path(path) as tmp:
            tmp.write_text(text[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs, "atomic_write_text", record_on_a_full_disk)
    code, _, err = _select("subset.jsonl", "--count", "5")
    assert code == 2
    assert err == "error: cannot write subset.jsonl.run.json: No space left on device\n"
    assert _listing(place) == before
    with pytest.raises(gf.GradfilterError, match="No space left on device"):
        gf.select("data.jsonl", "s.parquet", "fresh/new.jsonl", count=2)
    assert _listing(place) == before  # no subset, and no directory made for it
