"""Under torchrun (gloo on CPU) the table is the one a single process writes.

Ranks that split the members (each rank its own members): compared bitwise. The reference runs
with one thread, as torchrun's workers do (OMP_NUM_THREADS=1), so that what differs is only how
the members are split: member m pads every batch to the same width on any rank, and its numbers
do not depend on the others held beside it (CPU matmuls give each row the same result whatever
the number of rows; were that not so on some BLAS, the differences would be float32 rounding,
~1e-7 relative).

Ranks that share a member's batches (data shards): the same optimiser steps as one process up
to the order of float sums (a step's gradient summed over ranks rather than over micro-batches,
slices padded to other widths), a difference that starts at float32 rounding and grows through
training. The tolerances are set by that float noise as one process shows it: the reference
run again with only its micro-batch cut changed (--batch-tokens 200 instead of 1000, the same
steps summed in another order) moves losses by up to 3.5e-7 relative, squared norms by up to
1.2e-4 and sketches by up to 2.4e-4 of their norm. Against those: losses rtol 1e-5, squared
norms rtol 1e-3, sketches 1e-3 of each sketch's norm, IFD ratios rtol 1e-5, and every
utility's selection at 10%, 25% and 50% identical. Measured worst over 2 and 4 processes, both
collection modes: losses 4.3e-7, squared norms 1.4e-4, sketches 2.4e-4, IFD ratios 0.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import alpaca_records, cli_process, column_values, write_json

import gradfilter as gf
from gradfilter.scoring.checkpoint import SLEEP_HOOK
from gradfilter.selection import select_top
from gradfilter.table import utility_scores
from gradfilter.utilities import TARGET_UTILITIES, UTILITIES

N_RECORDS = 26
# batch_tokens 1000: with M = 3 (rows of 52-159 tokens) steps and collection batches run as
# micro-batches of 1 or 2 (of 3) rows per member, cut the same on every rank.
SETTINGS = dict(lora_rank=2, batch_size=4, collect_batch_size=5, lr=5e-3, seed=5,
                batch_tokens=1000)


def _command(args: tuple[str, ...], processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(processes), "-m", "gradfilter", *args]


def _torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(_command(args, processes), capture_output=True, text=True,
                          timeout=300)


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


@pytest.fixture(scope="module")
def two_member_references(data, gpt2_proxy, tmp_path_factory) -> dict:
    """The one-process tables of M = 2, per collection mode."""
    root = tmp_path_factory.mktemp("references")
    return {collect: _reference(data, root / f"{collect}.parquet", gpt2_proxy, 2, collect)
            for collect in ("during", "snapshot")}


def _assert_close_statistics(table, reference) -> None:
    """Equal to the order of float sums (the tolerances of the module's docstring), and the
    same selections."""
    columns = [c for c in reference.column_names
               if c.startswith(("loss_e", "sqnorm_", "sketch_", "ifd_ratio"))]
    assert {"sqnorm_e2_m1", "sketch_e2_m1", "loss_e1_m0", "ifd_ratio"} <= set(columns)
    assert table.column_names == reference.column_names
    for column in columns:
        ours, theirs = column_values(table, column), column_values(reference, column)
        assert np.array_equal(np.isnan(ours), np.isnan(theirs)), column
        if column.startswith("sketch_"):
            scale = np.linalg.norm(np.nan_to_num(theirs), axis=1, keepdims=True)
            assert np.all(np.abs(np.nan_to_num(ours - theirs)) <= 1e-3 * scale), column
        else:
            rtol = 1e-3 if column.startswith("sqnorm_") else 1e-5
            np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=0, err_msg=column)
    for utility in (u for u in UTILITIES if u not in TARGET_UTILITIES):  # no target here
        for ratio in (0.1, 0.25, 0.5):
            chosen = [select_top(utility_scores(t, utility), ratio).indices.tolist()
                      for t in (table, reference)]
            assert chosen[0] == chosen[1], (utility, ratio)


def _layout(out: Path) -> list[dict]:
    return json.loads(out.with_name(out.name + ".run.json").read_text())["layout"]


@pytest.mark.parametrize("collect,groups", [("during", None), ("snapshot", 1)])
def test_four_ranks_form_member_groups_of_data_shards(tmp_path, data, gpt2_proxy,
                                                      two_member_references, collect, groups):
    """M = 2 on 4 ranks. By default 2 groups: ranks 0-1 train member 0, ranks 2-3 member 1,
    each rank half of every batch. With one group, every rank holds both members and a quarter
    of each batch (of the last step's 2 rows, ranks 0 and 2 get none). The run record shows
    each example trained once per member and epoch, and collected once."""
    out = tmp_path / "stats.parquet"
    result = _torchrun("score", str(data), "--out", str(out), *_options(gpt2_proxy, 2),
                       "--collect", collect,
                       *(["--member-groups", str(groups)] if groups else []), processes=4)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_close_statistics(gf.load_stats(out), two_member_references[collect])
    layout = _layout(out)
    if groups is None:
        blocks = [[0, 1], [2, 3]]
        assert [(p["rank"], p["members"], p["shard"], p["shards"]) for p in layout] == [
            (0, [0], 0, 2), (1, [0], 1, 2), (2, [1], 0, 2), (3, [1], 1, 2)]
    else:
        blocks = [[0, 1, 2, 3]]
        assert [(p["members"], p["shard"], p["shards"]) for p in layout] == [
            ([0, 1], j, 4) for j in range(4)]
        assert [p["examples_trained"] for p in layout] == [[6, 6], [7, 7], [6, 6], [7, 7]]
    for block in blocks:  # each example of each epoch once per member, in shares
        assert [sum(layout[r]["examples_trained"][e] for r in block) for e in (0, 1)] == [
            N_RECORDS, N_RECORDS]
        assert all(layout[r]["examples_trained"][0] < N_RECORDS for r in block)
        collected = [sum(layout[r]["examples_collected"].get(e, 0) for r in block)
                     for e in ("1", "2")]
        assert collected == ([N_RECORDS] * 2 if collect == "snapshot" else [0, 0])


def test_two_ranks_share_both_members_and_select_on_rank_0(tmp_path, data, gpt2_proxy,
                                                           two_member_references):
    """`run` with one member group on 2 ranks: both hold members 0 and 1, each half of every
    batch; the selection is written once, by rank 0, and is the one-process selection."""
    out, stats = tmp_path / "subset.json", tmp_path / "stats.parquet"
    result = _torchrun("run", str(data), "--out", str(out), "--stats", str(stats),
                       "--ratio", "0.25", "--collect", "snapshot", "--member-groups", "1",
                       *_options(gpt2_proxy, 2))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("kept 7 of 26 records by snr-member-gated") == 1
    reference = two_member_references["snapshot"]
    _assert_close_statistics(gf.load_stats(stats), reference)
    kept = select_top(utility_scores(reference, "snr-member-gated"), 0.25).indices
    records = alpaca_records(N_RECORDS)
    assert json.loads(out.read_text()) == [records[i] for i in sorted(kept)]
    assert [p["members"] for p in _layout(stats)] == [[0, 1], [0, 1]]


def test_two_ranks_share_the_target_pass(tmp_path, data, gpt2_proxy):
    """--target-examples with one member group on 2 ranks: each data shard measures its
    collection batches of the target set (7 examples: 2 batches, one per shard) and the
    merged alignments are the one-process ones, to the sketches' tolerance."""
    target = write_json(tmp_path / "target.json", alpaca_records(N_RECORDS + 7)[N_RECORDS:])
    out = tmp_path / "stats.parquet"
    result = _torchrun("score", str(data), "--out", str(out), "--member-groups", "1",
                       "--target-examples", str(target), *_options(gpt2_proxy, 2))
    assert result.returncode == 0, result.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = gf.ScoreConfig(proxy=gpt2_proxy, members=2, device="cpu", **SETTINGS)
        reference = gf.score(data, tmp_path / "reference.parquet", config, progress=False,
                             target_examples=target)
    finally:
        torch.set_num_threads(threads)
    table = gf.load_stats(out)
    columns = [c for c in reference.column_names if c.startswith(("align_e", "alignmax_e"))]
    assert {"align_e1_m0", "align_e2_m1", "alignmax_e2_m1"} <= set(columns)
    for column in columns:
        ours, theirs = column_values(table, column), column_values(reference, column)
        assert np.isfinite(theirs).any(), column
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=5e-3, err_msg=column)
    assert [(p["shard"], p["shards"]) for p in _layout(out)] == [(0, 2), (1, 2)]


def _worker_pids(agent: int) -> dict[int, int]:
    """rank -> pid of the workers torchrun's agent `agent` started (from /proc)."""
    workers = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            parent = re.search(r"^PPid:\s+(\d+)", status.read_text(), re.M)
            environ = (status.parent / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if parent is None or int(parent.group(1)) != agent:
            continue
        rank = [v for v in environ if v.startswith(b"RANK=")]
        if rank:
            workers[int(rank[0].removeprefix(b"RANK="))] = int(status.parent.name)
    return workers


def test_a_rank_killed_in_training_resumes_to_the_same_table(tmp_path, data, gpt2_proxy,
                                                             two_member_references):
    """--collect during, 2 ranks sharing both members: SIGKILL rank 1 after a commit inside
    epoch 1 (each rank's records of that epoch partly written, rank 1's in its own files);
    torchrun stops the run; the same command resumes it to the one-process table. A copy of
    the checkpoint resumes in one process (another layout: rank 1's files merged) to it too."""
    out, checkpoint = tmp_path / "stats.parquet", tmp_path / "ckpt"
    args = ("score", str(data), "--out", str(out), *_options(gpt2_proxy, 2), "--collect",
            "during", "--member-groups", "1", "--checkpoint-dir", str(checkpoint),
            "--checkpoint-every", "2")
    state = checkpoint / "state.json"
    with open(tmp_path / "first.err", "w") as errors:
        proc = subprocess.Popen(_command(args, 2), stdout=subprocess.DEVNULL, stderr=errors,
                                env={**os.environ, SLEEP_HOOK: "0.5"})
    try:
        deadline = time.monotonic() + 240
        while not (state.exists() and json.loads(state.read_text())["step"] >= 4):
            assert proc.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "no commit at step 4 in time"
            time.sleep(0.05)
        os.kill(_worker_pids(proc.pid)[1], signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    step = json.loads(state.read_text())["step"]
    assert 4 <= step < 14 and not out.exists()  # 7 steps an epoch
    parts = sorted(p.name for p in (checkpoint / f"train-{step:09d}").iterdir())
    assert parts == ["common.pt", "member0.pt", "member0.rank1.pt", "member1.pt",
                     "member1.rank1.pt"]
    shutil.copytree(checkpoint, tmp_path / "ckpt-copy")

    result = _torchrun(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.with_name(out.name + ".run.json").read_text())
    assert record["checkpoint"]["resumed_from_step"] == step
    assert [p["examples_trained"][1] for p in record["layout"]] == [13, 13]
    _assert_close_statistics(gf.load_stats(out), two_member_references["during"])

    config = gf.ScoreConfig(proxy=gpt2_proxy, members=2, device="cpu", collect="during",
                            **SETTINGS)
    alone = gf.score(data, tmp_path / "alone.parquet", config, progress=False,
                     checkpoint_dir=tmp_path / "ckpt-copy", checkpoint_every=2)
    alone_record = json.loads((tmp_path / "alone.parquet.run.json").read_text())
    assert alone_record["checkpoint"]["resumed_from_step"] == step
    _assert_close_statistics(alone, two_member_references["during"])


def test_layouts_that_cannot_work_are_refused(tmp_path, data, gpt2_proxy):
    out = tmp_path / "stats.parquet"
    result = cli_process("score", str(data), "--out", str(out), *_options(gpt2_proxy, 2),
                         "--member-groups", "2")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --member-groups 2 needs at least 2 processes, this "
                                     "run has 1 (torchrun --nproc-per-node)")
    assert not out.exists()
    with pytest.raises(gf.GradfilterError, match="--member-groups 3 is more than --members 2"):
        gf.score(data, out, gf.ScoreConfig(proxy=gpt2_proxy, members=2, device="cpu"),
                 member_groups=3, progress=False)
