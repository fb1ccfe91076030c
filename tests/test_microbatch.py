"""Micro-batches within a token budget (`--batch-tokens`) change no statistic beyond float
rounding, keep the method's batch (one optimiser step per --batch-size examples per member),
and cut every batch the same way whichever members a process holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import alpaca_records, sharegpt_records, write_json

import gradfilter as gf
from gradfilter.data.dataset import read_dataset
from gradfilter.scoring.batching import member_batches, micro_batches, row_chunks
from gradfilter.scoring.budget import auto_batch_tokens, gradient_bytes_per_token
from gradfilter.scoring.collection import train_and_collect
from gradfilter.scoring.ensemble import LoRAEnsemble
from gradfilter.scoring.proxy import default_targets, load_model, load_tokenizer
from gradfilter.scoring.tokenization import encode

LENGTHS = np.random.default_rng(0).integers(5, 300, 200)


@pytest.mark.parametrize("budget", [1, 100, 999, 4096, 10**6])
@pytest.mark.parametrize("members", [1, 3, 4])
def test_micro_batches_cover_the_rows_within_the_budget(budget, members):
    plan = member_batches(LENGTHS, 16, members, seed=1, epoch=1, bucketing=True)
    for k in range(len(plan[0])):
        step = [member[k] for member in plan]
        parts = micro_batches(step, LENGTHS, budget)
        covered = np.concatenate([np.arange(len(step[0]))[part] for part, _ in parts])
        assert np.array_equal(covered, np.arange(len(step[0])))
        for part, width in parts:
            rows = part.stop - part.start
            assert width == max(int(LENGTHS[b[part]].max()) for b in step)
            assert rows == 1 or members * rows * width <= budget
        sizes = [part.stop - part.start for part, _ in parts]
        assert max(sizes) - min(sizes) <= 1  # near-equal chunks, not a short tail
    assert row_chunks(16, 100, 4, 10**6) == [slice(0, 16)]
    assert row_chunks(16, 100, 4, 1) == [slice(k, k + 1) for k in range(16)]


def test_the_cut_depends_on_all_members_rows_only():
    """A process holding some members cuts their rows exactly as one holding all M does."""
    plan = member_batches(LENGTHS, 16, 4, seed=1, epoch=2, bucketing=True)
    for k in range(len(plan[0])):
        step = [member[k] for member in plan]
        assert micro_batches(step, LENGTHS, 2000) == micro_batches(list(step), LENGTHS, 2000)
        whole = micro_batches(step, LENGTHS, 10**9)
        assert len(whole) == 1 and whole[0][1] == max(int(LENGTHS[b].max()) for b in step)


def _stat_columns(table) -> list[str]:
    return [c for c in table.column_names if c.startswith(("loss_", "sqnorm_"))]


@pytest.mark.parametrize(("arch", "bucketing", "collect"), [
    ("gpt2", True, "snapshot"), ("gpt2", False, "snapshot"), ("llama", True, "snapshot"),
    ("gpt2", True, "during")])
def test_micro_batched_table_equals_the_whole_batch_table(tmp_path, gpt2_proxy, llama_proxy,
                                                          arch, bucketing, collect):
    """Training (gradient accumulation over micro-batches of one row per member, budget 1)
    and collection give the whole-batch table to rtol 1e-4. Each example's loss and gradient
    are its own, so the cut changes only the order of float32 sums: the accumulated gradient
    and the matmul shapes differ by ~1e-7 relative per step, which AdamW and 12 steps at a
    large learning rate amplify to ~1e-6 (the member-independence test's tolerance, 1e-4, is
    kept). Stepping per micro-batch, or dividing by the micro-batch's rows, moves the
    statistics by far more than that (checked below)."""
    proxy = gpt2_proxy if arch == "gpt2" else llama_proxy
    records = alpaca_records(22) if arch == "gpt2" else sharegpt_records(18)
    data = write_json(tmp_path / "d.json", records)

    def run(name: str, **overrides):
        settings = dict(proxy=proxy, members=3, lora_rank=4, lr=5e-3, batch_size=4,
                        collect_batch_size=7, seed=11, device="cpu", length_bucketing=bucketing,
                        collect=collect)
        config = gf.ScoreConfig(**{**settings, **overrides})
        return gf.score(data, tmp_path / f"{name}.parquet", config, progress=False)

    whole, micro = run("whole", batch_tokens=10**9), run("micro", batch_tokens=1)
    assert _stat_columns(whole) == _stat_columns(micro)
    print("largest relative difference:", max(
        float(np.max(np.abs(micro.column(c).to_numpy() / whole.column(c).to_numpy() - 1)))
        for c in _stat_columns(whole)))
    for column in _stat_columns(whole):
        np.testing.assert_allclose(micro.column(column).to_numpy(),
                                   whole.column(column).to_numpy(), rtol=1e-4, atol=0,
                                   err_msg=column)
    # The method's batch is kept: a batch of 1 (one step per example) is another model.
    single = run("single", batch_tokens=10**9, batch_size=1)
    assert not np.allclose(single.column("sqnorm_e2_m0").to_numpy(),
                           whole.column("sqnorm_e2_m0").to_numpy(), rtol=1e-3)


def test_one_optimiser_step_per_batch_whatever_the_budget(tmp_path, gpt2_proxy):
    """15 examples, batch 4: 4 steps per epoch (the last of 3 rows), with or without a cut."""
    tokenizer = load_tokenizer(gpt2_proxy)
    dataset = read_dataset(write_json(tmp_path / "d.json", alpaca_records(15)))
    encoded = [encode(dataset.turns(r), tokenizer, "plain", 512) for r in dataset.records]
    losses = {}
    for budget in (1, 10**9):
        config = gf.ScoreConfig(proxy=gpt2_proxy, members=2, lora_rank=2, batch_size=4,
                                lr=5e-3, device="cpu", batch_tokens=budget)
        model = load_model(gpt2_proxy, torch.device("cpu"))
        ensemble = LoRAEnsemble(model, 2, 2, 16.0, default_targets(model), 0)
        stats = train_and_collect(ensemble, encoded, np.arange(15), config.with_targets(
            default_targets(model)), torch.device("cpu"), torch.float32, progress=False)
        assert stats.batch_tokens == budget
        losses[budget] = np.array(stats.train_losses)
    assert len(losses[1]) == 2 * 4
    np.testing.assert_allclose(losses[1], losses[10**9], rtol=1e-5)


def test_auto_budget_on_cpu_is_fixed_and_fits_memory(gpt2_proxy):
    model = load_model(gpt2_proxy, torch.device("cpu"))
    cpu = torch.device("cpu")
    first = auto_batch_tokens(model, cpu, torch.float32, "gradients")
    assert first == auto_batch_tokens(model, cpu, torch.float32, "gradients") >= 256
    assert auto_batch_tokens(model, cpu, torch.float32, "forward") >= 256

    class SmolLM2:  # SmolLM2-135M's shape: 2.5 MB per row-token was measured
        hidden_size, intermediate_size, num_hidden_layers, vocab_size = 576, 1536, 30, 49152

    estimate = gradient_bytes_per_token(SmolLM2, torch.float32)
    assert 2.0e6 < estimate < 3.2e6
    assert gradient_bytes_per_token(SmolLM2, torch.bfloat16) < 0.6 * estimate


def test_auto_budget_on_cuda_follows_the_device_memory(monkeypatch, gpt2_proxy):
    """No GPU here: the device's properties are stood in for; the rule is arithmetic."""
    model = load_model(gpt2_proxy, torch.device("cpu"))

    class Properties:
        total_memory = 80 * 10**9

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties)
    cuda = torch.device("cuda")
    train = auto_batch_tokens(model, cuda, torch.bfloat16, "gradients")
    forward = auto_batch_tokens(model, cuda, torch.bfloat16, "forward")
    per_token = gradient_bytes_per_token(model.config, torch.bfloat16)
    assert train % 256 == 0 and train <= 0.5 * Properties.total_memory / per_token < train + 256
    assert train < forward <= 4 * train + 256
    Properties.total_memory = 40 * 10**9
    assert auto_batch_tokens(model, cuda, torch.bfloat16, "gradients") < train
