"""The Python API on records in memory: score and select take a list of dicts, a
datasets.Dataset or a pandas DataFrame as they take a file, out=None returns the results
(kept records in the schema asked, every record's decision, a DataFrame), the table's binding
holds there too, and docs/api.md's example runs as printed."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import alpaca_records, sharegpt_records, write_jsonl

import gradfilter as gf

API_DOC = Path(__file__).parents[1] / "docs" / "api.md"


@pytest.fixture
def config(gpt2_proxy) -> gf.ScoreConfig:
    return gf.ScoreConfig(proxy=gpt2_proxy, device="cpu")


def test_a_list_a_hf_dataset_and_a_frame_score_as_the_file_does(tmp_path, config):
    import datasets
    import pandas as pd

    records = sharegpt_records(8)
    from_file = gf.score(write_jsonl(tmp_path / "d.jsonl", records), tmp_path / "d.parquet",
                         config, method="length", progress=False)
    for data in (records, datasets.Dataset.from_list(records), pd.DataFrame(records)):
        table = gf.score(data, config=config, method="length", progress=False)
        assert table.column("length").to_pylist() == from_file.column("length").to_pylist()
        assert table.column("record_id").to_pylist() == [r["id"] for r in records]
        # the same records in memory are the same data: the file's table selects them
        kept = gf.select(data, from_file, count=3).kept
        assert [r["id"] for r in kept] == [f"conv-{i}" for i in sorted(
            gf.select_top(from_file.column("length").to_numpy(), count=3).indices)]
    # out=None wrote nothing: only the file's data, table and run record are there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "d.parquet",
                                                          "d.parquet.run.json"]


def test_out_none_returns_records_decisions_and_a_frame(config):
    records = alpaca_records(8)
    table = gf.score(records, config=config, method="length", progress=False)
    subset = gf.select(records, table, ratio=0.5, order="score",
                       out_schema="prompt-completion")
    scores = table.column("length").to_numpy()
    best = np.argsort(-scores, kind="stable")[:4]
    assert [r["completion"] for r in subset.kept] == [records[i]["output"] for i in best]
    frame = subset.to_pandas()
    assert list(frame["selected"]) == [i in set(best) for i in range(8)]
    assert list(frame["instruction"]) == [r["instruction"] for r in records]
    assert set(frame.loc[~frame["selected"], "reason"]) == {"below the cut"}
    assert frame["rank"].tolist() == (np.argsort(np.argsort(-scores, kind="stable")) + 1
                                      ).tolist()
    annotated = subset.annotated()
    assert annotated[best[0]]["gradfilter"]["rank"] == 1 and "output" in annotated[0]


def test_in_memory_refusals_are_one_line(config, tmp_path):
    records = sharegpt_records(6)
    table = gf.score(records, config=config, method="length", progress=False)
    with pytest.raises(gf.GradfilterError, match=r"other data than <6 records in memory>"):
        gf.select(records[::-1], table, count=2)
    with pytest.raises(gf.GradfilterError, match=r"record 2 is a str, not a dict"):
        gf.score([*records[:2], "text"], config=config, method="length", progress=False)
    with pytest.raises(gf.GradfilterError, match=r"annotate: out=None writes nothing"):
        gf.select(records, table, count=2, annotate=tmp_path / "a.jsonl")
    assert not (tmp_path / "a.jsonl").exists()
    with pytest.raises(gf.GradfilterError, match=r"must be a path"):
        gf.select(42, table, count=2)


def test_a_list_selected_into_a_file_is_written_by_its_extension(config, tmp_path):
    records = sharegpt_records(6)
    table = gf.score(records, config=config, method="length", progress=False)
    out = tmp_path / "kept.jsonl"
    subset = gf.select(records, table, out, count=2)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == [records[i] for i in np.sort(subset.indices)]


def test_stratified_selection_in_memory_is_the_files(config, tmp_path):
    """--stratify reads the records' field from memory as it streams it from a file."""
    records = [{**r, "source": "web" if i < 6 else "books"}
               for i, r in enumerate(alpaca_records(8))]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    table = gf.score(path, tmp_path / "d.parquet", config, method="length", progress=False)
    from_file = gf.select(path, table, tmp_path / "kept.jsonl", ratio=0.5, stratify="source")
    in_memory = gf.select(records, table, ratio=0.5, stratify="source")
    assert [r["source"] for r in in_memory.kept].count("books") == 1  # the pool's share, 2/8
    assert sorted(in_memory.indices) == sorted(from_file.indices)
    assert in_memory.strata == from_file.strata


def _example(doc: str) -> tuple[str, list[str]]:
    """The first Python block of the page, and the lines it says it prints (`#> ...`)."""
    block = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    return block, [line[3:] for line in block.splitlines() if line.startswith("#> ")]


def test_the_api_page_example_runs_and_prints_what_it_says(gpt2_proxy):
    code, expected = _example(API_DOC.read_text())
    code = re.sub(r'^PROXY = .*$', f"PROXY = {gpt2_proxy!r}", code, flags=re.M)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(API_DOC), "exec"), {})
    assert printed.getvalue().splitlines() == expected
