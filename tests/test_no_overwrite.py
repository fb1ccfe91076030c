"""No command writes over one of its own inputs: every writing command (score, select, run,
bench noise/speed/judge, demo) compares what it will write with what it reads, after resolving
links and relative paths, and refuses before reading anything: one line naming both, exit 2,
nothing written. Two outputs of one command that land on one place are refused alike."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, cli_process, run_cli, write_json

import gradfilter as gf

TINY = ["--members", "2", "--lora-rank", "2", "--batch-size", "4", "--device", "cpu", "--quiet"]


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A working directory holding a dataset and a statistics table for it."""
    monkeypatch.chdir(tmp_path)
    write_json(tmp_path / "data.json", alpaca_records(6))
    pq.write_table(pa.table({"gsnr": np.arange(6, dtype=np.float64)}), tmp_path / "s.parquet")
    return tmp_path


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): None if p.is_dir() or p.is_symlink() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


def _refused(root: Path, *args: object, names: tuple[str, ...]) -> str:
    """Run the command; it must exit 2 with one line naming each of `names`, and leave every
    file under `root` as it was."""
    before = _snapshot(root)
    code, _, err = run_cli(*args)
    assert code == 2, err
    assert err.startswith("error: refusing to write") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in err, (name, err)
    assert _snapshot(root) == before
    return err


# --- run -------------------------------------------------------------------------------------

@pytest.mark.parametrize("out", ["data.json", "./data.json", "link.json", "sub/../data.json"])
def test_run_refuses_to_write_the_subset_over_its_data(place, gpt2_proxy, out):
    (place / "sub").mkdir()
    (place / "link.json").symlink_to(place / "data.json")
    err = _refused(place, "run", "data.json", "--out", out, "--proxy", gpt2_proxy, *TINY,
                   names=("the subset (--out", "the data (DATA data.json)"))
    assert f"both are {place / 'data.json'}" in err


def test_run_refuses_the_data_given_by_an_absolute_path_and_a_relative_output(place,
                                                                              gpt2_proxy):
    _refused(place, "run", place / "data.json", "--out", "data.json", "--proxy", gpt2_proxy,
             *TINY, names=(str(place / "data.json"),))


def test_run_refuses_a_table_over_its_data(place, gpt2_proxy):
    _refused(place, "run", "data.json", "--out", "subset.json", "--stats", "./data.json",
             "--proxy", gpt2_proxy, *TINY,
             names=("the statistics table (--stats data.json)", "the data (DATA data.json)"))


def test_run_refuses_two_outputs_on_one_file(place, gpt2_proxy):
    err = _refused(place, "run", "data.json", "--out", "x.json", "--stats", "x.json",
                   "--proxy", gpt2_proxy, *TINY, names=("--out x.json", "--stats x.json"))
    assert "two outputs to one place" in err


def test_run_refuses_a_run_record_over_its_data(place, gpt2_proxy):
    """`<out>.run.json` is written too: an input of that name is refused."""
    (place / "subset.json.run.json").write_text('[{"instruction": "a", "output": "b"}]')
    _refused(place, "run", "subset.json.run.json", "--out", "subset.json", "--proxy", gpt2_proxy,
             *TINY, names=("the run record of --out", "DATA subset.json.run.json"))


def test_run_refuses_an_output_inside_the_proxy_directory(place, gpt2_proxy):
    _refused(place, "run", "data.json", "--out", Path(gpt2_proxy) / "subset.json", "--proxy",
             gpt2_proxy, *TINY, names=(f"--proxy {gpt2_proxy}", "lies inside"))


def test_run_refuses_an_hf_output_directory_holding_its_data(place, gpt2_proxy):
    (place / "ds").mkdir()
    write_json(place / "ds" / "d.json", alpaca_records(4))
    _refused(place, "run", "ds/d.json", "--out", "ds", "--out-format", "hf", "--proxy",
             gpt2_proxy, *TINY, names=("the data (DATA ds/d.json) lies inside the subset "
                                       "(--out ds)",))


# --- score -----------------------------------------------------------------------------------

def test_score_refuses_to_write_the_table_over_its_data(place, gpt2_proxy):
    (place / "link.parquet").symlink_to(place / "data.json")
    _refused(place, "score", "data.json", "--out", "link.parquet", "--proxy", gpt2_proxy,
             *TINY, names=("the statistics table (--out link.parquet)", "DATA data.json"))


def test_score_refuses_a_table_inside_its_checkpoint_directory(place, gpt2_proxy):
    (place / "ck").mkdir()
    _refused(place, "score", "data.json", "--out", "ck/s.parquet", "--checkpoint-dir", "ck",
             "--proxy", gpt2_proxy, *TINY,
             names=("--out ck/s.parquet", "the checkpoint directory (--checkpoint-dir ck)"))


def test_score_refuses_its_data_as_the_adapters_directory(place, gpt2_proxy):
    (place / "adapters").mkdir()
    write_json(place / "adapters" / "d.json", alpaca_records(4))
    _refused(place, "score", "adapters/d.json", "--out", "s2.parquet", "--save-adapters",
             "adapters", "--proxy", gpt2_proxy, *TINY,
             names=("DATA adapters/d.json", "--save-adapters adapters"))


# --- select ----------------------------------------------------------------------------------

@pytest.mark.parametrize("out", ["data.json", "./data.json", "link.json"])
def test_select_refuses_to_write_the_subset_over_its_data(place, out):
    (place / "link.json").symlink_to("data.json")
    _refused(place, "select", "data.json", "--stats", "s.parquet", "--ratio", "0.5",
             "--out", out, names=("the subset (--out", "the data (DATA data.json)"))


def test_select_refuses_to_write_the_subset_over_its_table(place):
    _refused(place, "select", "data.json", "--stats", "./s.parquet", "--ratio", "0.5",
             "--out", "s.parquet", names=("--out s.parquet", "--stats s.parquet"))


def test_select_in_a_subprocess_leaves_the_data_byte_for_byte(place):
    """As a user runs it: a real process, its own working directory, exit 2."""
    before = (place / "data.json").read_bytes()
    result = cli_process("select", "./data.json", "--stats", "s.parquet", "--count", "2",
                         "--out", "data.json", cwd=place)
    assert result.returncode == 2
    assert result.stderr.startswith("error: refusing to write over an input: the subset "
                                    "(--out data.json) is the data (DATA data.json)")
    assert (place / "data.json").read_bytes() == before


def test_the_python_select_refuses_too(place):
    with pytest.raises(gf.GradfilterError, match="refusing to write over an input"):
        gf.select(place / "data.json", place / "s.parquet", "data.json", ratio=0.5)


def test_the_python_score_refuses_too(place, gpt2_proxy):
    with pytest.raises(gf.GradfilterError, match="refusing to write over an input"):
        gf.score("data.json", place / "data.json", gf.ScoreConfig(proxy=gpt2_proxy))


def test_select_refuses_a_file_output_on_an_existing_directory(place):
    (place / "outdir").mkdir()
    code, _, err = run_cli("select", "data.json", "--stats", "s.parquet", "--ratio", "0.5",
                           "--out", "outdir")
    assert code == 2
    assert err == ("error: the subset (--out outdir) is an existing directory; it is written "
                   "as a file (name a file)\n")


# --- the benchmarks and the demo -------------------------------------------------------------

def test_bench_noise_refuses_data_inside_its_output_directory(place, gpt2_proxy):
    (place / "bench").mkdir()
    write_json(place / "bench" / "mixed.jsonl", alpaca_records(4))
    _refused(place, "bench", "noise", "bench/mixed.jsonl", "--out-dir", "bench", "--proxy",
             gpt2_proxy, *TINY, names=("DATA bench/mixed.jsonl", "--out-dir bench"))


def test_bench_speed_refuses_to_write_its_figures_over_its_data(place, gpt2_proxy):
    _refused(place, "bench", "speed", "data.json", "--out", "./data.json", "--proxy",
             gpt2_proxy, *TINY, names=("--out ./data.json", "DATA data.json"))


def test_bench_judge_refuses_answers_over_a_prompts_file(place):
    (place / "out").mkdir()
    (place / "out" / "answers-a.jsonl").write_text('{"prompt": "hi"}\n')
    _refused(place, "bench", "judge", "--model", "a=x", "--model", "b=y", "--prompts",
             "out/answers-a.jsonl", "--out", "out", "--judge-url", "http://127.0.0.1:9/v1",
             "--judge-model", "j", names=("the answers of a", "--prompts out/answers-a.jsonl"))


def test_demo_refuses_a_subset_linked_to_its_data(place):
    from gradfilter.demo import demo_data

    try:
        data = demo_data()
    except gf.GradfilterError as exc:
        pytest.skip(str(exc))
    (place / "demo").mkdir()
    os.symlink(data, place / "demo" / "subset.jsonl")
    _refused(place, "demo", "--out-dir", "demo", "--quiet",
             names=("the subset (--out-dir demo/subset.jsonl)", f"the data (DATA {data})"))


def test_demo_refuses_to_replace_a_users_file_in_its_directory(place):
    from gradfilter.demo import demo_data

    try:
        demo_data()
    except gf.GradfilterError as exc:
        pytest.skip(str(exc))
    (place / "demo").mkdir()
    (place / "demo" / "data.jsonl").write_text('{"messages": []}\n')
    _refused(place, "demo", "--out-dir", "demo", "--quiet",
             names=("demo/data.jsonl", "is not what this demo writes"))


def test_the_demo_may_rewrite_its_own_files_and_nothing_else(tmp_path):
    from gradfilter.bench.noise import write_labels, write_messages
    from gradfilter.data.conversations import Turn
    from gradfilter.demo import refuse_foreign_files

    mixed = [[Turn("user", "hi"), Turn("assistant", "hello")],
             [Turn("user", "2+2?"), Turn("assistant", "4")]]
    labels = [None, "swap"]
    refuse_foreign_files(tmp_path, mixed, labels)  # nothing there yet
    write_messages(tmp_path / "data.jsonl", mixed)
    write_labels(tmp_path / "labels.parquet", np.arange(2), labels)
    refuse_foreign_files(tmp_path, mixed, labels)  # an earlier demo's identical files
    with pytest.raises(gf.GradfilterError, match="is not what this demo writes"):
        refuse_foreign_files(tmp_path, mixed, [None, None])  # other labels
    with pytest.raises(gf.GradfilterError, match="is not what this demo writes"):
        refuse_foreign_files(tmp_path, mixed[::-1], labels)  # other data
    (tmp_path / "labels.parquet").write_text("not parquet")
    with pytest.raises(gf.GradfilterError, match="is not what this demo writes"):
        refuse_foreign_files(tmp_path, mixed, labels)
    (tmp_path / "labels.parquet").unlink()
    (tmp_path / "data.jsonl").unlink()
    (tmp_path / "data.jsonl").mkdir()
    with pytest.raises(gf.GradfilterError, match="is not what this demo writes"):
        refuse_foreign_files(tmp_path, mixed, labels)
