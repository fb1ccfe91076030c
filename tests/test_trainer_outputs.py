"""Subsets a trainer takes as they are: the container follows --out's extension (a
contradiction with --out-format refused, nothing written), an empty selection is a valid empty
container with the reason said, and the run record holds the cut score and the table's path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, sharegpt_records, write_json, write_jsonl

import gradfilter as gf


@pytest.fixture
def scored(tmp_path, gpt2_proxy) -> dict:
    """ShareGPT records as JSON Lines and Alpaca records as a JSON array, each with its
    length table (scored by the tiny GPT-2's tokenizer)."""
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", sharegpt_records(8))
    alpaca = write_json(tmp_path / "alpaca.json", alpaca_records(8))
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu")
    for data in (sharegpt, alpaca):
        gf.score(data, tmp_path / f"{data.stem}.parquet", config, method="length",
                 progress=False)
    return {"sharegpt": sharegpt, "alpaca": alpaca, "dir": tmp_path,
            "sharegpt_table": tmp_path / "sharegpt.parquet",
            "alpaca_table": tmp_path / "alpaca.parquet"}


def _kept_ids(scored: dict, ratio: float = 0.5) -> list[str]:
    scores = gf.load_stats(scored["sharegpt_table"]).column("length").to_numpy()
    chosen = np.sort(gf.select_top(scores, ratio=ratio).indices)
    return [f"conv-{i}" for i in chosen]


@pytest.mark.parametrize("name", ["sel.json", "sel.json.gz"])
def test_a_json_name_gets_a_json_array_from_json_lines(scored, cli, name):
    out = scored["dir"] / name
    code, _, err = cli("select", scored["sharegpt"], "--stats", scored["sharegpt_table"],
                       "--ratio", "0.5", "--out", out, "--no-report")
    assert code == 0, err
    import gzip
    raw = gzip.decompress(out.read_bytes()) if name.endswith(".gz") else out.read_bytes()
    records = json.loads(raw)  # one JSON document: an array, not lines
    assert isinstance(records, list)
    assert [r["id"] for r in records] == _kept_ids(scored)
    run = json.loads(Path(f"{out}.run.json").read_text())
    assert run["out_format"] == "json"


def test_a_jsonl_name_gets_lines_and_a_parquet_name_parquet(scored, cli):
    lines, table = scored["dir"] / "sel.jsonl", scored["dir"] / "sel.parquet"
    for out in (lines, table):
        code, _, err = cli("select", scored["alpaca"], "--stats", scored["alpaca_table"],
                           "--count", "3", "--out", out, "--no-report")
        assert code == 0, err
    from_lines = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(from_lines) == 3 and all("instruction" in r for r in from_lines)
    assert pq.read_table(table).to_pylist() == from_lines


def test_an_extension_against_out_format_is_refused_and_nothing_written(scored, cli):
    out = scored["dir"] / "sel.json"
    code, _, err = cli("select", scored["sharegpt"], "--stats", scored["sharegpt_table"],
                       "--ratio", "0.5", "--out", out, "--out-format", "jsonl", "--no-report")
    assert code == 2 and err.count("\n") == 1, err
    assert "sel.json" in err and "json file" in err and "--out-format is jsonl" in err
    assert not out.exists() and not Path(f"{out}.run.json").exists()
    code, _, err = cli("select", scored["sharegpt"], "--stats", scored["sharegpt_table"],
                       "--ratio", "0.5", "--out", scored["dir"] / "sel.parquet",
                       "--out-format", "hf", "--no-report")
    assert code == 2 and "--out-format is hf" in err
    assert not (scored["dir"] / "sel.parquet").exists()


def test_no_extension_keeps_the_input_container(scored, cli):
    out = scored["dir"] / "subset"
    code, _, err = cli("select", scored["sharegpt"], "--stats", scored["sharegpt_table"],
                       "--ratio", "0.5", "--out", out, "--no-report")
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == _kept_ids(scored)


@pytest.mark.parametrize("name", ["empty.json", "empty.jsonl", "empty.parquet"])
def test_nothing_kept_is_a_valid_empty_container_and_says_why(scored, cli, name):
    out = scored["dir"] / name
    code, stdout, err = cli("select", scored["sharegpt"], "--stats", scored["sharegpt_table"],
                            "--ratio", "0.01", "--out", out, "--no-report")
    assert code == 0, err
    assert "nothing kept: --ratio 0.01 of 8 records rounds to 0" in stdout
    if name.endswith(".json"):
        assert json.loads(out.read_text()) == []
    elif name.endswith(".jsonl"):
        assert out.read_text() == ""
    else:
        assert pq.read_table(out).num_rows == 0
    run = json.loads(Path(f"{out}.run.json").read_text())
    assert run["selected"] == 0 and run["cut_score"] is None and "rounds to 0" in run[
        "nothing_kept"]


def test_the_run_record_holds_the_cut_score_and_the_tables_path(scored, tmp_path, gpt2_proxy):
    out = tmp_path / "run.json"
    subset = gf.select(scored["sharegpt"], scored["sharegpt_table"], out, ratio=0.5)
    run = json.loads(Path(f"{out}.run.json").read_text())
    kept = subset.scores[subset.indices]
    assert run["cut_score"] == pytest.approx(kept.min())
    below = np.setdiff1d(np.flatnonzero(np.isfinite(subset.scores)), subset.indices)
    assert (subset.scores[below] <= run["cut_score"]).all()
    assert run["stats"] == str(scored["sharegpt_table"])


# --- every decision traceable: --rejected and --annotate --------------------------------------

def _with_ifd(table_path: Path, ratios: list[float], out: Path) -> Path:
    """The length table with IFD ratios beside it (as the ifd baseline stores them): the
    records at a ratio >= 1 get no ifd score, as Superfiltering's gate says."""
    import pyarrow as pa

    table = pq.read_table(table_path)
    unscorable = np.array([r is not None for r in table.column("skip_reason").to_pylist()])
    ratio = np.where(unscorable, np.nan, ratios)  # as a scoring run leaves them
    table = table.append_column("ifd_ratio", pa.array(ratio)).append_column(
        "ifd", pa.array(np.where(ratio < 1, ratio, np.nan)))
    pq.write_table(table, out)
    return out


def test_annotate_gives_every_record_its_decision_and_rejected_the_rest(scored, cli,
                                                                       gpt2_proxy):
    records = sharegpt_records(8)
    records[3]["conversations"] = [{"from": "human", "value": "No answer here"}]
    data = write_jsonl(scored["dir"] / "holes.jsonl", records)
    table = gf.score(data, scored["dir"] / "holes.parquet",
                     gf.ScoreConfig(proxy=gpt2_proxy, device="cpu"), method="length",
                     progress=False)
    ratios = [0.5, 1.5, 0.7, 0.9, 2.0, 0.6, 0.8, 0.4]
    stats = _with_ifd(scored["dir"] / "holes.parquet", ratios, scored["dir"] / "ifd.parquet")
    out, rejected, annotated = (scored["dir"] / n for n in ("k.jsonl", "r.json", "a.jsonl"))
    code, stdout, err = cli("select", data, "--stats", stats, "--utility", "ifd", "--count", "2",
                            "--out", out, "--rejected", rejected, "--annotate", annotated,
                            "--no-report")
    assert code == 0, err
    assert "rejected:         " in stdout and "(6 records)" in stdout
    rows = [json.loads(line) for line in annotated.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in records]  # every record, unchanged
    decisions = [r["gradfilter"] for r in rows]
    # ifd ranks the highest ratio below 1 first; record 3 (no answer) is unscorable, so
    # 0.8 (record 6) and 0.7 (record 2) are kept
    skip = table.column("skip_reason").to_pylist()
    assert skip[3] is not None
    expected = {0: "below the cut", 1: "gated out", 2: "selected", 3: "unscorable: " + skip[3],
                4: "gated out", 5: "below the cut", 6: "selected", 7: "below the cut"}
    for i, reason in expected.items():
        assert decisions[i]["reason"].startswith(reason), (i, decisions[i])
        assert decisions[i]["selected"] == (reason == "selected")
        assert decisions[i]["index"] == i
    assert [d["rank"] for d in decisions] == [4, None, 2, None, None, 3, 1, 5]
    assert decisions[1]["score"] is None and decisions[2]["score"] == pytest.approx(0.7)
    kept = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    dropped = [r["id"] for r in json.loads(rejected.read_text())]  # .json: an array
    assert kept == ["conv-2", "conv-6"]
    assert sorted(kept + dropped) == sorted(r["id"] for r in records) and len(dropped) == 6
    run = json.loads(Path(f"{out}.run.json").read_text())
    assert run["decisions"]["gated out: IFD ratio >= 1 (the answer is no easier to predict "
                            "with its prompt than without it)"] == 2
    assert run["rejected"] == {"path": str(rejected), "records": 6}


def test_a_trace_over_an_input_or_the_subset_is_refused(scored, cli):
    out = scored["dir"] / "k.jsonl"
    for clash in (scored["sharegpt"], out):
        code, _, err = cli("select", scored["sharegpt"], "--stats", scored["sharegpt_table"],
                           "--ratio", "0.5", "--out", out, "--rejected", clash, "--no-report")
        assert code == 2 and "--rejected" in err and err.count("\n") == 1, err
        assert not out.exists()
    assert len(scored["sharegpt"].read_text().splitlines()) == 8  # the input is untouched


# --- --out-schema: what TRL's trainers take as they are ---------------------------------------

def _is_conversational(example: dict) -> bool:
    """TRL's documented test (trl.data_utils.is_conversational): a known key whose value is a
    list of messages, each a dict with 'role' and 'content'."""
    keys = ("prompt", "chosen", "rejected", "completion", "messages")
    found = [k for k in keys if k in example]
    return bool(found) and isinstance(example[found[0]], list) and all(
        isinstance(m, dict) and {"role", "content"} <= set(m) for m in example[found[0]])


def test_messages_schema_normalises_sharegpt_roles_and_loads_with_datasets(scored, cli,
                                                                            llama_proxy):
    out = scored["dir"] / "chat.parquet"
    code, _, err = cli("select", scored["sharegpt"], "--stats", scored["sharegpt_table"],
                       "--ratio", "0.5", "--out", out, "--out-schema", "messages",
                       "--no-report")
    assert code == 0, err
    import datasets
    from transformers import AutoTokenizer

    subset = datasets.Dataset.from_parquet(str(out))
    assert subset.column_names == ["messages"] and len(subset) == 4
    originals = {r["id"]: r for r in sharegpt_records(8)}
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    for example, name in zip(subset, _kept_ids(scored), strict=True):
        assert _is_conversational(example)
        turns = originals[name]["conversations"]
        assert example["messages"] == [{"role": roles[t["from"]], "content": t["value"]}
                                       for t in turns]
        rendered = AutoTokenizer.from_pretrained(llama_proxy).apply_chat_template(
            example["messages"], tokenize=False)
        assert "<|im_start|>user" in rendered and "<|im_start|>human" not in rendered


def test_prompt_completion_schema_is_the_plain_text_scored(scored, cli):
    out = scored["dir"] / "pc.jsonl"
    code, _, err = cli("select", scored["alpaca"], "--stats", scored["alpaca_table"],
                       "--count", "4", "--order", "score", "--out", out,
                       "--out-schema", "prompt-completion", "--score-field", "s", "--no-report")
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    scores = gf.load_stats(scored["alpaca_table"]).column("length").to_numpy()
    best = gf.select_top(scores, count=4).indices  # score order
    for row, i in zip(rows, best, strict=True):
        source = alpaca_records(8)[i]
        prompt = source["instruction"] + ("\n" + source["input"] if source["input"] else "")
        assert row == {"prompt": prompt + "\n", "completion": source["output"],
                       "s": pytest.approx(scores[i])}
        assert not _is_conversational(row)


def test_prompt_completion_refuses_a_conversation_and_writes_nothing(scored, cli):
    out = scored["dir"] / "pc.jsonl"
    code, _, err = cli("select", scored["sharegpt"], "--stats", scored["sharegpt_table"],
                       "--ratio", "1", "--out", out, "--out-schema", "prompt-completion",
                       "--no-report")
    assert code == 2 and err.count("\n") == 1, err
    assert "record 1" in err and "--out-schema messages" in err
    assert not out.exists() and not Path(f"{out}.run.json").exists()


def test_run_names_its_table_and_writes_the_traces(scored, cli, gpt2_proxy):
    out = scored["dir"] / "run-sel.jsonl"
    code, _, err = cli("run", scored["alpaca"], "--out", out, "--proxy", gpt2_proxy,
                       "--method", "length", "--ratio", "0.25", "--quiet", "--no-report",
                       "--annotate", scored["dir"] / "run-ann.parquet")
    assert code == 0, err
    assert json.loads(out.read_text().splitlines()[0])["instruction"]  # .jsonl from .json
    run = json.loads(Path(f"{out}.run.json").read_text())
    assert run["stats"] == f"{out}.stats.parquet" and Path(run["stats"]).is_file()
    annotated = pq.read_table(scored["dir"] / "run-ann.parquet").to_pylist()
    assert sum(r["gradfilter"]["selected"] for r in annotated) == run["selected"] == 2


# --- --threshold: a cut that means the same across shards and runs ----------------------------

def test_a_threshold_cuts_shards_scored_apart_as_it_cuts_the_whole(scored, cli, gpt2_proxy):
    records, folder = sharegpt_records(8), scored["dir"]
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu")
    halves = [write_jsonl(folder / f"half-{k}.jsonl", records[4 * k:4 * k + 4]) for k in (0, 1)]
    for half in halves:
        gf.score(half, folder / f"{half.stem}.parquet", config, method="length", progress=False)
    scores = gf.load_stats(scored["sharegpt_table"]).column("length").to_numpy()
    cut = float(np.median(scores))
    kept = []
    for half in halves:
        out = folder / f"{half.stem}-kept.jsonl"
        code, _, err = cli("select", half, "--stats", folder / f"{half.stem}.parquet",
                           "--threshold", cut, "--out", out, "--no-report")
        assert code == 0, err
        kept += [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert kept == [f"conv-{i}" for i in np.flatnonzero(scores >= cut)] and kept
    run = json.loads(Path(f"{folder / 'half-1-kept.jsonl'}.run.json").read_text())
    assert run["threshold"] == cut and run["cut_score"] >= cut


def test_a_threshold_above_every_score_keeps_nothing_and_says_why(scored, cli):
    out = scored["dir"] / "t.jsonl"
    code, stdout, err = cli("select", scored["sharegpt"], "--stats", scored["sharegpt_table"],
                            "--threshold", "1e9", "--out", out, "--no-report")
    assert code == 0, err
    assert "nothing kept: no record scores at least --threshold 1e+09" in stdout
    assert out.read_text() == ""


def test_a_table_named_by_a_string_gives_the_same_decisions(scored, tmp_path):
    by_path = gf.select(scored["sharegpt"], scored["sharegpt_table"], tmp_path / "a.jsonl",
                        count=3)
    by_name = gf.select(str(scored["sharegpt"]), str(scored["sharegpt_table"]),
                        str(tmp_path / "b.jsonl"), count=3)
    assert by_name.decisions.reasons == by_path.decisions.reasons
    assert by_name.decisions.counts() == {"selected": 3, "below the cut": 5}


def test_a_stratified_selections_passed_over_records_are_not_called_near_duplicates():
    from gradfilter.decisions import BELOW_CUT, NOT_IN_STRATUM, SELECTED, decide
    from gradfilter.selection import Selection

    scores = np.array([0.9, 0.8, 0.7, 0.6, np.nan])
    ranked = np.array([0, 1, 2, 3])
    stratified = Selection(ranked, 2, 5, 1, chosen=np.array([0, 2]))  # record 1's stratum full
    decided = decide(stratified, ranked, scores, "gsnr", None, None)
    assert decided.reasons[:4] == [SELECTED, NOT_IN_STRATUM, SELECTED, BELOW_CUT]
    plain = decide(Selection(ranked, 2, 5, 1), ranked, scores, "gsnr", None, None)
    assert plain.reasons[:4] == [SELECTED, SELECTED, BELOW_CUT, BELOW_CUT]
