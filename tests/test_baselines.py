"""Baselines: IFD and perplexity against a one-example-at-a-time reference, length, random."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import alpaca_records, cli_process, sharegpt_records, write_json, write_jsonl

import gradfilter as gf
from gradfilter.data.conversations import Turn
from gradfilter.scoring.proxy import load_model, load_tokenizer
from gradfilter.scoring.tokenization import encode


def _config(proxy: str, **overrides) -> gf.ScoreConfig:
    """float32: the references below are float32 forwards (`auto` may pick bfloat16 for
    forward passes on a CPU with AMX; test_auto_dtype_* covers that)."""
    return gf.ScoreConfig(proxy=proxy, collect_batch_size=5, max_length=200, device="cpu",
                          **{"dtype": "float32", **overrides})


def _reference_nll(model, ids: list[int], scored: list[bool]) -> float:
    """One forward of one example; HF's own loss over the tokens marked `scored`."""
    labels = [t if keep else -100 for t, keep in zip(ids, scored, strict=True)]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
    return float(out.loss)


def _reference_ifd(model, tokenizer, prompt: str, response: str) -> tuple[float, float]:
    """Superfiltering's definition with the plain template: prompt `instruction\\n[input\\n]`,
    response = output + EOS; PPL(y) from the response after one start token."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = [*tokenizer(response, add_special_tokens=False)["input_ids"],
                    tokenizer.eos_token_id]
    conditional = math.exp(_reference_nll(model, prompt_ids + response_ids,
                                          [False] * len(prompt_ids) + [True] * len(response_ids)))
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    alone = math.exp(_reference_nll(model, [start, *response_ids],
                                    [False] + [True] * len(response_ids)))
    return conditional, alone


@pytest.mark.parametrize("batch_tokens", [None, 150])
def test_ifd_batched_equals_one_example_at_a_time(tmp_path, gpt2_proxy, batch_tokens):
    """Batches of 5 rows, whole (auto budget) or cut into micro-batches of 1-2 rows (150)."""
    records = alpaca_records(13)
    table = gf.score(write_json(tmp_path / "a.json", records), tmp_path / "ifd.parquet",
                     _config(gpt2_proxy, batch_tokens=batch_tokens), method="ifd",
                     progress=False)
    run = json.loads((tmp_path / "ifd.parquet.run.json").read_text())
    assert run["batch_tokens"] == batch_tokens or batch_tokens is None
    model, tokenizer = load_model(gpt2_proxy, torch.device("cpu")), load_tokenizer(gpt2_proxy)
    tokens_run = 0  # both passes, unpadded: the rows share no prefix under the plain template
    for i, record in enumerate(records):
        prompt = record["instruction"] + "\n" + (record["input"] + "\n" if record["input"] else "")
        conditional, alone = _reference_ifd(model, tokenizer, prompt, record["output"])
        tokens_run += _ifd_tokens(tokenizer, prompt, record["output"])
        assert table["perplexity"][i].as_py() == pytest.approx(conditional, rel=1e-4)
        assert table["perplexity_response"][i].as_py() == pytest.approx(alone, rel=1e-4)
        ratio = conditional / alone
        assert table["ifd_ratio"][i].as_py() == pytest.approx(ratio, rel=1e-4)
        assert (table["ifd"][i].as_py() is None or math.isnan(table["ifd"][i].as_py())) == (
            ratio >= 1)
    assert run["forward_tokens"] == tokens_run


def _ifd_tokens(tokenizer, prompt: str, response: str) -> int:
    """Tokens IFD's two passes run for one record: prompt and response + EOS, then the
    response + EOS after one start token."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return len(prompt_ids) + 2 * (len(response_ids) + 1) + 1


def test_gsnr_table_carries_the_untrained_proxys_ifd_ratio(tmp_path, gpt2_proxy):
    """The G-SNR run's IFD pass (before any LoRA is installed) equals the IFD baseline's, bit
    for bit (the same proxy, tokens and micro-batches); --no-ifd-pass leaves it and the gated
    utilities out."""
    data = write_json(tmp_path / "a.json", alpaca_records(13))
    config = _config(gpt2_proxy, members=2, lora_rank=2, batch_size=4)
    ifd = gf.score(data, tmp_path / "ifd.parquet", config, method="ifd", progress=False)
    gsnr = gf.score(data, tmp_path / "gsnr.parquet", config, progress=False)
    np.testing.assert_array_equal(gsnr["ifd_ratio"].to_numpy(), ifd["ifd_ratio"].to_numpy())
    kept = ifd["ifd_ratio"].to_numpy() < 1  # (the gate itself: test_utilities_selection.py)
    gated = gsnr["gsnr_cv_gated"].to_numpy()
    np.testing.assert_array_equal(gated[kept], gsnr["gsnr_cv"].to_numpy()[kept])
    plain = gf.score(data, tmp_path / "plain.parquet",
                     gf.ScoreConfig(**{**config.__dict__, "ifd_pass": False}), progress=False)
    assert "ifd_ratio" not in plain.column_names and "gsnr_cv_gated" not in plain.column_names
    np.testing.assert_array_equal(plain["gsnr_cv"].to_numpy(), gsnr["gsnr_cv"].to_numpy())

def test_ifd_with_a_chat_template_and_multi_turn_matches_the_reference(tmp_path, llama_proxy):
    records = sharegpt_records(6)
    table = gf.score(write_json(tmp_path / "s.json", records), tmp_path / "ifd.parquet",
                     _config(llama_proxy), method="ifd", progress=False)
    model, tokenizer = load_model(llama_proxy, torch.device("cpu")), load_tokenizer(llama_proxy)
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    for i, record in enumerate(records):
        turns = [Turn(roles[t["from"]], t["value"]) for t in record["conversations"]]
        item = encode(turns, tokenizer, "chat", 200)
        ids, mask = item.input_ids.tolist(), item.response_mask.tolist()
        conditional = math.exp(_reference_nll(model, ids, mask))
        response = [t for t, keep in zip(ids, mask, strict=True) if keep]
        alone = math.exp(_reference_nll(model, [tokenizer.eos_token_id, *response],
                                        [False] + [True] * len(response)))
        assert table["perplexity"][i].as_py() == pytest.approx(conditional, rel=1e-4)
        assert table["ifd_ratio"][i].as_py() == pytest.approx(conditional / alone, rel=1e-4)


def test_length_random_and_unscorable_records(tmp_path, gpt2_proxy):
    records = alpaca_records(9)
    records[4]["output"] = ""  # the plain template still scores its EOS
    records[6] = {"instruction": "x " * 400, "input": "", "output": "too late"}
    data = write_json(tmp_path / "a.json", records)
    length = gf.score(data, tmp_path / "length.parquet", _config(gpt2_proxy), method="length",
                      progress=False)
    expected = length["n_response_tokens"].to_numpy().astype(float)
    expected[6] = np.nan
    np.testing.assert_array_equal(length["length"].to_numpy(zero_copy_only=False), expected)
    assert length["skip_reason"][6].as_py() == "no response tokens within max_length"

    def draw(seed: int) -> np.ndarray:
        table = gf.score(data, tmp_path / f"random{seed}.parquet", _config(gpt2_proxy, seed=seed),
                         method="random", progress=False)
        return table["random"].to_numpy(zero_copy_only=False)

    first, again, other = draw(3), draw(3), draw(4)
    np.testing.assert_array_equal(first, again)
    assert np.isnan(first[6]) and np.isfinite(np.delete(first, 6)).all()
    assert not np.allclose(np.delete(first, 6), np.delete(other, 6))


def test_cli_scores_with_a_baseline_and_selects_by_it(tmp_path, gpt2_proxy):
    records = alpaca_records(12)
    data = write_jsonl(tmp_path / "a.jsonl", records)
    out = tmp_path / "subset.jsonl"
    result = cli_process("run", str(data), "--method", "perplexity",
                         "--count", "3", "--out", str(out),
                         "--proxy", gpt2_proxy, "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "kept 3 of 12 records by perplexity" in result.stdout
    stats = gf.load_stats(tmp_path / "subset.jsonl.stats.parquet")
    top = np.argsort(-stats["perplexity"].to_numpy(), kind="stable")[:3]
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert kept == [records[i] for i in sorted(top)]
    run = json.loads((tmp_path / "subset.jsonl.stats.parquet.run.json").read_text())
    assert run["method"] == "perplexity"

    wrong = cli_process("select", str(data),
                        "--stats", str(tmp_path / "subset.jsonl.stats.parquet"),
                        "--utility", "gsnr", "--count", "2", "--out", str(tmp_path / "no.jsonl"))
    assert wrong.returncode == 2
    assert ("no utility 'gsnr'; it offers ['perplexity-low', 'perplexity-high', 'perplexity']"
            in wrong.stderr)
    assert not (tmp_path / "no.jsonl").exists()


def test_perplexity_in_both_directions_with_each_stated(tmp_path, gpt2_proxy):
    """`perplexity-low` keeps the lowest perplexity first, `perplexity-high` (and its other name
    `perplexity`) the highest; one pass, one column; the table's metadata says which way."""
    from gradfilter.table import load_scores, table_meta

    records = alpaca_records(12)
    data = write_jsonl(tmp_path / "a.jsonl", records)
    table = gf.score(data, tmp_path / "low.parquet", _config(gpt2_proxy),
                     method="perplexity-low", progress=False)
    meta = table_meta(table)
    assert meta["utility"] == "perplexity-low"
    assert meta["directions"]["perplexity-low"] == "lowest perplexity first, a quality filter"
    assert meta["directions"]["perplexity-high"] == "highest perplexity first, hard examples"
    perplexity = table["perplexity"].to_numpy()
    for name, sign in (("perplexity-low", -1), ("perplexity-high", 1), ("perplexity", 1)):
        assert gf.utility_scores(table, name) == pytest.approx(sign * perplexity)
        assert load_scores(tmp_path / "low.parquet", name) == pytest.approx(sign * perplexity)
    lowest = gf.select(data, tmp_path / "low.parquet", tmp_path / "low.jsonl", count=3)
    assert sorted(lowest.indices) == sorted(np.argsort(perplexity, kind="stable")[:3])
    highest = gf.select(data, tmp_path / "low.parquet", tmp_path / "high.jsonl", count=3,
                        utility="perplexity-high")
    assert sorted(highest.indices) == sorted(np.argsort(-perplexity, kind="stable")[:3])


@pytest.mark.parametrize("amx", [True, False])
def test_auto_dtype_is_bfloat16_only_for_forward_passes_on_a_cpu_with_amx(monkeypatch, amx):
    from gradfilter.scoring import proxy

    monkeypatch.setattr(proxy, "cpu_has_bf16_matrix_units", lambda: amx)
    cpu = torch.device("cpu")
    assert proxy.resolve_dtype("auto", cpu, "forward") == (torch.bfloat16 if amx
                                                           else torch.float32)
    assert proxy.resolve_dtype("auto", cpu, "gradients") == torch.float32
    assert proxy.resolve_dtype("float32", cpu, "forward") == torch.float32
    assert proxy.resolve_dtype("bfloat16", cpu, "gradients") == torch.bfloat16


def test_auto_dtype_ifd_on_a_cpu_with_amx_ranks_as_float32_does(tmp_path, gpt2_proxy,
                                                                monkeypatch):
    """The run records the dtype it used; bfloat16's ratios are float32's to rounding."""
    from gradfilter.scoring import proxy

    monkeypatch.setattr(proxy, "cpu_has_bf16_matrix_units", lambda: True)
    data = write_json(tmp_path / "a.json", alpaca_records(13))
    runs = {}
    for dtype in ("auto", "float32"):
        out = tmp_path / f"{dtype}.parquet"
        table = gf.score(data, out, _config(gpt2_proxy, dtype=dtype), method="ifd",
                         progress=False)
        record = json.loads(out.with_name(out.name + ".run.json").read_text())
        runs[record["dtype"]] = table["ifd_ratio"].to_numpy()
    assert set(runs) == {"torch.bfloat16", "torch.float32"}
    assert not np.array_equal(runs["torch.bfloat16"], runs["torch.float32"])
    np.testing.assert_allclose(runs["torch.bfloat16"], runs["torch.float32"], rtol=0.05)
