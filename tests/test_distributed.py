"""Under torchrun (2 CPU processes, gloo) the table is the one a single process writes.

Compared bitwise. The reference runs with one thread, as torchrun's workers do
(OMP_NUM_THREADS=1), so that what differs is only how the members are split: member m pads
every batch to the same width on any rank, and its numbers do not depend on the others held
beside it (CPU matmuls give each row the same result whatever the number of rows; were that
not so on some BLAS, the differences would be float32 rounding, ~1e-7 relative).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import alpaca_records, column_values, write_json

import gradfilter as gf

N_RECORDS = 26
# batch_tokens 1000: with M = 3 (rows of 52-159 tokens) steps and collection batches run as
# micro-batches of 1 or 2 (of 3) rows per member, cut the same on every rank.
SETTINGS = dict(lora_rank=2, batch_size=4, collect_batch_size=5, lr=5e-3, seed=5,
                batch_tokens=1000)


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "gradfilter", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _options(proxy: str, members: int) -> list[str]:
    options = ["--proxy", proxy, "--members", str(members), "--device", "cpu", "--quiet"]
    for name, value in SETTINGS.items():
        options += [f"--{name.replace('_', '-')}", str(value)]
    return options


def _reference(data: Path, out: Path, proxy: str, members: int, collect: str = "snapshot"):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = gf.ScoreConfig(proxy=proxy, members=members, device="cpu", collect=collect,
                                **SETTINGS)
        return gf.score(data, out, config, progress=False)
    finally:
        torch.set_num_threads(threads)


def _assert_same_statistics(table, reference) -> None:
    columns = [c for c in reference.column_names
               if c.startswith(("loss_", "sqnorm_", "sketch"))]
    assert any(c.startswith("sketch_") for c in columns)  # the sketches go through it too
    assert columns and table.column_names == reference.column_names
    for column in columns:
        assert np.array_equal(column_values(table, column), column_values(reference, column),
                              equal_nan=True), column


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_json(tmp_path_factory.mktemp("dist") / "alpaca.json", alpaca_records(N_RECORDS))


@pytest.mark.parametrize("collect", ["snapshot", "during"])
def test_two_ranks_split_three_members(tmp_path, data, gpt2_proxy, collect):
    """Rank 0 holds members 0 and 2, rank 1 member 1; with a checkpoint directory, which a
    single process then finishes from (the number of processes is not in the fingerprint).
    With --collect during, each rank records its own members' statistics while training."""
    out, checkpoint = tmp_path / "stats.parquet", tmp_path / "ckpt"
    result = _torchrun("score", str(data), "--out", str(out), *_options(gpt2_proxy, 3),
                       "--checkpoint-dir", str(checkpoint), "--checkpoint-every", "3",
                       "--collect", collect)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("statistics table:") == 1  # rank 0 only
    reference = _reference(data, tmp_path / "reference.parquet", gpt2_proxy, 3, collect)
    _assert_same_statistics(gf.load_stats(out), reference)
    record = json.loads(out.with_name(out.name + ".run.json").read_text())
    assert record["world_size"] == 2
    final = checkpoint / "train-000000014"  # 2 epochs x 7 steps
    assert sorted(p.name for p in final.iterdir()) == [
        "common.pt", "member0.pt", "member1.pt", "member2.pt"]
    shards = sorted(p.name for p in (checkpoint / "collect-e2").glob("*.npz"))
    if collect == "snapshot":
        assert any(name.endswith("-m0_2.npz") for name in shards)
        assert any(name.endswith("-m1.npz") for name in shards)
    else:
        assert not shards  # no collection pass

    config = gf.ScoreConfig(proxy=gpt2_proxy, members=3, device="cpu", collect=collect,
                            **SETTINGS)
    again = gf.score(data, tmp_path / "again.parquet", config, progress=False,
                     checkpoint_dir=checkpoint)
    _assert_same_statistics(again, reference)


def test_more_ranks_than_members_split_the_collection(tmp_path, data, gpt2_proxy):
    """M = 1 on 2 ranks: both train member 0, each collects every other batch; `run` selects
    on rank 0 only."""
    out = tmp_path / "subset.json"
    stats = tmp_path / "stats.parquet"
    result = _torchrun("run", str(data), "--out", str(out), "--stats", str(stats),
                       "--ratio", "0.25", "--collect", "snapshot", *_options(gpt2_proxy, 1))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("kept 7 of 26 records by snr-member-gated") == 1
    assert len(json.loads(out.read_text())) == 7
    reference = _reference(data, tmp_path / "reference.parquet", gpt2_proxy, 1, "snapshot")
    _assert_same_statistics(gf.load_stats(stats), reference)
