"""Hugging Face datasets as DATA: save_to_disk directories (Dataset and DatasetDict) and hub ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records

import gradfilter as gf
from gradfilter.utilities import DEFAULT_UTILITY


def _stats(n: int, seed: int = 0) -> pa.Table:
    """A statistics table with a stored gsnr column (select needs no more); record 1 unscored."""
    scores = np.random.default_rng(seed).permutation(n).astype(np.float64)
    scores[1] = np.nan
    return pa.table({"gsnr": scores})


def _dataset(n: int = 12) -> datasets.Dataset:
    """Alpaca rows with an id first, a list column and a ClassLabel (features beyond inference)."""
    rows = [{"id": i, **r, "tags": ["x"] * (i % 3), "label": i % 2}
            for i, r in enumerate(alpaca_records(n))]
    ds = datasets.Dataset.from_list(rows)
    return ds.cast_column("label", datasets.ClassLabel(names=["bad", "good"]))


@pytest.fixture
def saved(tmp_path):
    ds = _dataset()
    ds.save_to_disk(str(tmp_path / "data"))
    return tmp_path / "data", ds


def test_read_save_to_disk_directory(saved):
    path, ds = saved
    dataset = gf.read_dataset(path)
    assert (dataset.format, dataset.container) == ("alpaca", "hf")
    assert [r.data for r in dataset.records] == ds.to_list()
    assert list(dataset.records[0].data) == ds.column_names


@pytest.mark.parametrize("order", ["input", "score"])
def test_subset_of_save_to_disk_keeps_rows_features_and_column_order(tmp_path, saved, order):
    path, ds = saved
    out = tmp_path / "subset"
    selection = gf.select(path, _stats(len(ds)), out, ratio=0.5, order=order)
    chosen = selection.in_order(order)
    assert len(chosen) == 6 and 1 not in chosen
    written = datasets.load_from_disk(str(out))
    assert written.features == ds.features
    assert written.column_names == ds.column_names
    assert written.to_list() == [ds[int(i)] for i in chosen]
    assert json.loads((tmp_path / "subset.run.json").read_text())["out_format"] == "hf"


@pytest.mark.parametrize("out_format", ["json", "jsonl", "parquet"])
def test_subset_of_save_to_disk_in_another_container(tmp_path, saved, out_format):
    path, ds = saved
    out = tmp_path / f"subset.{out_format}"
    table = _stats(len(ds))
    selection = gf.select(path, table, out, count=4, out_format=out_format,
                          score_field="gsnr_score")
    chosen = selection.in_order("input")
    expected = [{**ds[int(i)], "gsnr_score": table["gsnr"][int(i)].as_py()} for i in chosen]
    if out_format == "parquet":
        assert pq.read_table(out).to_pylist() == expected
        assert datasets.Dataset.from_parquet(str(out)).features["label"] == ds.features["label"]
    elif out_format == "jsonl":
        assert [json.loads(line) for line in out.read_text().splitlines()] == expected
    else:
        assert json.loads(out.read_text()) == expected


def test_dataset_dict_takes_train_by_default_and_split_chooses(tmp_path, cli):
    ds = _dataset()
    path = tmp_path / "dict"
    datasets.DatasetDict(train=ds, test=ds.select(range(5))).save_to_disk(str(path))
    assert len(gf.read_dataset(path).records) == 12
    assert [r.data for r in gf.read_dataset(path, split="test").records] == ds.to_list()[:5]
    out = tmp_path / "subset"
    selection = gf.select(path, _stats(5), out, count=2, split="test")
    assert datasets.load_from_disk(str(out)).to_list() == [
        ds[int(i)] for i in selection.in_order("input")]
    code, _, err = cli("inspect", path, "--split", "valid")
    assert code == 2
    assert err == (f"error: {path}: no split 'valid' in this DatasetDict; its splits are "
                   "['train', 'test'] (choose one with --split)\n")


def test_cli_run_on_a_save_to_disk_directory(tmp_path, saved, gpt2_proxy, cli):
    path, ds = saved
    out = tmp_path / "subset"
    code, stdout, err = cli("run", path, "--ratio", "0.25", "--out", out, "--proxy", gpt2_proxy,
                            "--members", "2", "--lora-rank", "2", "--batch-size", "4",
                            "--max-length", "64", "--device", "cpu", "--quiet")
    assert code == 0, err
    assert "kept 3 of 12 records by snr-member-gated" in stdout
    table = gf.load_stats(tmp_path / "subset.stats.parquet")
    chosen = gf.select_top(gf.utility_scores(table, DEFAULT_UTILITY),
                           ratio=0.25).in_order("input")
    written = datasets.load_from_disk(str(out))
    assert written.features == ds.features
    assert written.to_list() == [ds[int(i)] for i in chosen]


def test_hub_id_is_loaded_with_load_dataset(tmp_path, monkeypatch):
    """The hub itself is out of reach in the tests: load_dataset is replaced by a local one."""
    ds = _dataset()
    calls = []

    def load_dataset(name, split=None, **kwargs):
        calls.append((name, split))
        return ds

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    dataset = gf.read_dataset("someone/alpaca-like")
    assert (dataset.container, len(dataset.records)) == ("hf", 12)
    assert str(dataset.path) == "someone/alpaca-like"
    subset = gf.select("someone/alpaca-like", _stats(12), tmp_path / "subset", count=3,
                       split="test")
    assert calls == [("someone/alpaca-like", "train"), ("someone/alpaca-like", "test")]
    best = subset.best[0]  # previewed from the split that was selected from
    assert best.prompt == " ".join(ds[best.index]["instruction"].split())[:70]
    assert datasets.load_from_disk(str(tmp_path / "subset")).to_list() == [
        ds[int(i)] for i in subset.selection.in_order("input")]


def test_hub_id_without_the_hub_is_one_line_exit_2_and_no_output(tmp_path):
    pq.write_table(_stats(4), tmp_path / "stats.parquet")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run(
        [sys.executable, "-c", "from gradfilter.cli import main; main()", "select",
         "gradfilter-tests/no-such-dataset", "--stats", str(tmp_path / "stats.parquet"),
         "--ratio", "0.5", "--out", str(tmp_path / "subset.json")],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert result.stderr == (
        "error: gradfilter-tests/no-such-dataset: not a local file, and the Hugging Face hub is "
        "not reachable to load dataset 'gradfilter-tests/no-such-dataset' "
        "(HF_HUB_OFFLINE is set)\n")
    assert {p.name for p in tmp_path.iterdir()} <= {"hf-home", "stats.parquet"}


def test_what_is_neither_a_file_nor_a_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(gf.GradfilterError, match="plain: a directory, but not a Hugging Face "
                                                 "dataset written by save_to_disk"):
        gf.read_dataset(tmp_path / "plain")
    with pytest.raises(gf.GradfilterError, match=r"^data/train.jsonl: no such file$"):
        gf.read_dataset("data/train.jsonl")
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n', encoding="utf-8")
    with pytest.raises(gf.GradfilterError, match="--split applies to a Hugging Face dataset"):
        gf.read_dataset(data, split="train")
