"""benchmarks/studies/heldout_probe.py measures records under saved adapters one backward at a time:
under the adapters a snapshot run collected with, it must give that run's own numbers, and its
table must carry them with every utility recomputed."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "studies"))

import heldout_probe
from conftest import alpaca_records, write_jsonl

import gradfilter as gf
from gradfilter.data.dataset import as_dataset
from gradfilter.errors import GradfilterError
from gradfilter.scoring.proxy import load_model, load_tokenizer
from gradfilter.scoring.score import tokenize
from gradfilter.table import utility_scores


def test_measured_stats_are_the_engines_and_make_the_table(tmp_path, llama_proxy):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(8))
    config = gf.ScoreConfig(proxy=llama_proxy, members=2, lora_rank=2, batch_size=3,
                            collect="snapshot", sketch_dim=0, device="cpu", dtype="float32",
                            max_length=128)
    table = gf.score(data, tmp_path / "t.parquet", config, save_adapters=tmp_path / "adapters",
                     progress=False)
    tokens = tokenize(as_dataset(data), load_tokenizer(llama_proxy), config, False)
    halves = heldout_probe.halves(tokens.scorable, seed=0)
    assert sorted(np.concatenate(halves).tolist()) == tokens.scorable.tolist()
    jobs = [(rows, tmp_path / "adapters") for rows in halves]
    stats = heldout_probe.measure(load_model(llama_proxy, torch.device("cpu")), tokens.encoded,
                                  jobs, (1, 2), 2)
    for (kind, epoch), values in stats.items():
        for m in range(2):
            np.testing.assert_allclose(values[:, m],
                                       table.column(f"{kind}_e{epoch}_m{m}").to_numpy(),
                                       rtol=1e-4)
    doubled = {key: 2 * values if key[0] == "sqnorm" else values
               for key, values in stats.items()}
    rebuilt = heldout_probe.heldout_table(table, doubled)
    np.testing.assert_allclose(rebuilt.column("sqnorm_e2_m1").to_numpy(),
                               2 * table.column("sqnorm_e2_m1").to_numpy(), rtol=1e-4)
    # the relative drop is scale-free; the late variance takes the factor squared
    np.testing.assert_allclose(utility_scores(rebuilt, "drop"), utility_scores(table, "drop"),
                               rtol=1e-4)
    np.testing.assert_allclose(utility_scores(rebuilt, "uncertainty"),
                               4 * utility_scores(table, "uncertainty"), rtol=1e-4)


def test_work_made_with_another_split_is_refused(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(4))
    work = tmp_path / "work"
    work.mkdir()
    scorable = np.arange(10)
    parts = heldout_probe.halves(scorable, seed=0)
    heldout_probe.record_split(work, data, 0, parts)
    heldout_probe.record_split(work, data, 0, parts)  # the same halves: reused
    with pytest.raises(GradfilterError, match="another --split-seed"):
        heldout_probe.record_split(work, data, 1, heldout_probe.halves(scorable, seed=1))
    other = write_jsonl(tmp_path / "e.jsonl", alpaca_records(4))
    with pytest.raises(GradfilterError, match="other data"):
        heldout_probe.record_split(work, other, 0, parts)
