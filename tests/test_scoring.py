"""Invariants of the scoring stage on a tiny GPT-2: batching, member independence, seeds."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import alpaca_records, write_json
from peft import PeftModel

import gradfilter as gf
from gradfilter.scoring.proxy import load_model

N_RECORDS = 22


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_json(tmp_path_factory.mktemp("data") / "alpaca.json", alpaca_records(N_RECORDS))


def _config(proxy: str, **overrides) -> gf.ScoreConfig:
    settings = dict(proxy=proxy, members=3, lora_rank=4, lr=5e-3, batch_size=4,
                    collect_batch_size=7, seed=11, device="cpu", collect="snapshot")
    settings.update(overrides)
    return gf.ScoreConfig(**settings)


def _score(tmp_path, data, proxy, name, **overrides):
    return gf.score(data, tmp_path / f"{name}.parquet", _config(proxy, **overrides),
                    progress=False)


def _stat_columns(table) -> list[str]:
    return [c for c in table.column_names if c.startswith(("loss_", "sqnorm_"))]


def test_table_layout(tmp_path, data, gpt2_proxy):
    table = _score(tmp_path, data, gpt2_proxy, "layout")
    assert table.num_rows == N_RECORDS
    assert table.column("index").to_pylist() == list(range(N_RECORDS))
    for e in (1, 2):
        for m in range(3):
            assert f"loss_e{e}_m{m}" in table.column_names
            assert f"sqnorm_e{e}_m{m}" in table.column_names
    for name in ("gsnr", "gsnr_cv", "drop", "gradnorm", "uncertainty", "n_response_tokens"):
        assert name in table.column_names
    assert pq.read_table(tmp_path / "layout.parquet").equals(table)
    record = json.loads((tmp_path / "layout.parquet.run.json").read_text())
    assert record["config"]["members"] == 3 and record["versions"]["torch"]
    assert set(record["wall_seconds"]) >= {"train_epoch1", "collect_epoch1", "collect_epoch2"}


def test_collect_batch_size_does_not_change_the_table(tmp_path, data, gpt2_proxy):
    """Identical up to float32 rounding: each example is its own loss and its own gradient, so
    batching changes no number by design; but BLAS picks its kernel (and so the order of a float
    sum) by matrix shape, which moves a value by an ulp or so (seen: 1 ulp, in 1 of 264)."""
    one = _score(tmp_path, data, gpt2_proxy, "b1", collect_batch_size=1)
    seven = _score(tmp_path, data, gpt2_proxy, "b7", collect_batch_size=7)
    assert _stat_columns(one) == _stat_columns(seven)
    for column in _stat_columns(one):
        np.testing.assert_allclose(one.column(column).to_numpy(), seven.column(column).to_numpy(),
                                   rtol=1e-6, atol=0, err_msg=column)


def test_member_zero_of_three_equals_a_one_member_run(tmp_path, data, gpt2_proxy):
    """Same seed, same init, same data order. Only float rounding differs: the 3-member batch
    pads to the longest of 3x more rows and runs larger matmuls, which reorders float32 sums
    (relative 1e-7 per op); over 12 optimiser steps that stays far below 1e-4."""
    three = _score(tmp_path, data, gpt2_proxy, "m3", members=3)
    one = _score(tmp_path, data, gpt2_proxy, "m1", members=1)
    for e in (1, 2):
        for stat in ("loss", "sqnorm"):
            np.testing.assert_allclose(one.column(f"{stat}_e{e}_m0").to_numpy(),
                                       three.column(f"{stat}_e{e}_m0").to_numpy(), rtol=1e-4)
    # The other members really are different models.
    assert not np.allclose(three.column("sqnorm_e2_m0").to_numpy(),
                           three.column("sqnorm_e2_m1").to_numpy(), rtol=1e-3)


def test_same_seed_same_table_other_seed_other_table(tmp_path, data, gpt2_proxy):
    first = _score(tmp_path, data, gpt2_proxy, "s1")
    again = _score(tmp_path, data, gpt2_proxy, "s2")
    other = _score(tmp_path, data, gpt2_proxy, "s3", seed=12)
    assert first.select(_stat_columns(first)).equals(again.select(_stat_columns(again)))
    assert not np.allclose(first.column("sqnorm_e2_m0").to_numpy(),
                           other.column("sqnorm_e2_m0").to_numpy(), rtol=1e-3)


def test_training_moves_the_adapters(tmp_path, data, gpt2_proxy):
    table = _score(tmp_path, data, gpt2_proxy, "moves", epochs=3, late=3)
    early = table.column("loss_e1_m0").to_numpy()
    late = table.column("loss_e3_m0").to_numpy()
    assert late.mean() < early.mean()


def test_saved_adapters_load_in_peft_and_reproduce_losses(tmp_path, data, gpt2_proxy):
    adapters = tmp_path / "adapters"
    table = gf.score(data, tmp_path / "a.parquet", _config(gpt2_proxy, members=2),
                     save_adapters=adapters, progress=False)
    from gradfilter.data.conversations import to_turns
    from gradfilter.data.dataset import read_dataset
    from gradfilter.scoring.proxy import load_tokenizer
    from gradfilter.scoring.tokenization import encode

    tokenizer = load_tokenizer(gpt2_proxy)
    dataset = read_dataset(data)
    for epoch in (1, 2):
        for member in (0, 1):
            path = adapters / f"epoch{epoch}" / f"member{member}"
            assert (path / "adapter_config.json").is_file()
            assert (path / "adapter_model.safetensors").is_file()
            model = PeftModel.from_pretrained(load_model(gpt2_proxy, torch.device("cpu")), path)
            model.eval()
            for i in (0, 5, 13):
                item = encode(to_turns(dataset.records[i], "alpaca", data), tokenizer, "plain", 512)
                ids = torch.from_numpy(item.input_ids)[None]
                labels = ids.clone()
                labels[0, ~torch.from_numpy(item.response_mask)] = -100
                with torch.no_grad():
                    loss = model(input_ids=ids, labels=labels).loss.item()
                recorded = table.column(f"loss_e{epoch}_m{member}")[i].as_py()
                assert loss == pytest.approx(recorded, rel=1e-5)


def test_record_without_response_is_kept_unscored(tmp_path, gpt2_proxy):
    records = alpaca_records(6)
    records[2]["instruction"] = "long prompt " * 200  # no response token within max_length
    data = write_json(tmp_path / "d.json", records)
    table = gf.score(data, tmp_path / "t.parquet", _config(gpt2_proxy, max_length=64),
                     progress=False)
    assert table.column("skip_reason")[2].as_py() == "no response tokens within max_length"
    assert np.isnan(table.column("gsnr")[2].as_py())
    assert table.column("skip_reason").null_count == 5


def test_bfloat16_autocast_path_runs_and_stays_close(tmp_path, data, gpt2_proxy):
    """The GPU default (--dtype auto on a bf16 GPU) exercised on CPU: bf16 autocast with
    float32 norms; bf16 keeps ~3 significant digits, so losses agree to a few percent."""
    full = _score(tmp_path, data, gpt2_proxy, "f32", dtype="float32")
    half = _score(tmp_path, data, gpt2_proxy, "bf16", dtype="bfloat16")
    np.testing.assert_allclose(half.column("loss_e2_m0").to_numpy(),
                               full.column("loss_e2_m0").to_numpy(), rtol=0.02)
    assert np.isfinite(half.column("gsnr").to_numpy()).all()
