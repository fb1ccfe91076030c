"""Batch plans (length bucketing, widths), the member split under torchrun, the dir lock."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradfilter as gf
from gradfilter.scoring.batching import (
    BUCKET_BATCHES,
    Batcher,
    collection_batches,
    member_batches,
    step_widths,
)
from gradfilter.scoring.checkpoint import Checkpoint
from gradfilter.scoring.distributed import Comm, Layout
from gradfilter.scoring.tokenization import Encoded

N, BATCH = 1000, 8
LENGTHS = np.random.default_rng(0).lognormal(4, 0.8, N).astype(np.int64) + 2


@pytest.mark.parametrize("bucketing", [True, False])
def test_every_member_sees_every_example_once_per_epoch(bucketing):
    n = N + 3  # a short last batch
    lengths = np.concatenate([LENGTHS, [5, 6, 7]])
    plan = member_batches(lengths, BATCH, 3, seed=1, epoch=2, bucketing=bucketing)
    for batches in plan:
        assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(n))
        assert [len(b) for b in batches] == [BATCH] * (n // BATCH) + [3]
    assert not np.array_equal(np.concatenate(plan[0]), np.concatenate(plan[1]))


def test_a_members_batches_depend_on_seed_member_and_epoch_only():
    four = member_batches(LENGTHS, BATCH, 4, seed=1, epoch=1, bucketing=True)
    for m in range(4):
        alone = member_batches(LENGTHS, BATCH, m + 1, seed=1, epoch=1, bucketing=True)[m]
        assert all(np.array_equal(a, b) for a, b in zip(alone, four[m], strict=True))
    other_epoch = member_batches(LENGTHS, BATCH, 1, seed=1, epoch=2, bucketing=True)[0]
    other_seed = member_batches(LENGTHS, BATCH, 1, seed=2, epoch=1, bucketing=True)[0]
    for other in (other_epoch, other_seed):
        assert not np.array_equal(np.concatenate(other), np.concatenate(four[0]))


def test_bucketing_groups_similar_lengths_and_cuts_padding():
    plain = member_batches(LENGTHS, BATCH, 4, seed=1, epoch=1, bucketing=False)
    bucketed = member_batches(LENGTHS, BATCH, 4, seed=1, epoch=1, bucketing=True)

    def padded_tokens(plan):
        return int((step_widths(plan, LENGTHS) * BATCH * len(plan)).sum())

    real = int(LENGTHS.sum()) * 4
    assert padded_tokens(bucketed) < 1.2 * real < 2 * real < padded_tokens(plain)
    # Inside a batch, lengths are close (sorted within chunks of BUCKET_BATCHES batches); the
    # order of the batches is shuffled, not sorted by length.
    assert N > 2 * BATCH * BUCKET_BATCHES
    spread = np.median([np.ptp(LENGTHS[b]) for b in bucketed[0]])
    assert spread < 0.1 * np.median([np.ptp(LENGTHS[b]) for b in plain[0]])
    widths = [int(LENGTHS[b].max()) for b in bucketed[0]]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)


def test_collection_batches_longest_first_or_input_order():
    batches = collection_batches(LENGTHS, 32, bucketing=True)
    order = np.concatenate(batches)
    assert np.array_equal(np.sort(order), np.arange(N))
    assert (np.diff(LENGTHS[order]) <= 0).all()
    plain = np.concatenate(collection_batches(LENGTHS, 32, bucketing=False))
    assert np.array_equal(plain, np.arange(N))


def test_batcher_pads_to_the_given_width():
    items = [Encoded(np.arange(n, dtype=np.int64) + 1, np.arange(n) >= 2, False) for n in (3, 5)]
    batch = Batcher(items, torch.device("cpu")).batch([[0], [1]], width=7)
    assert batch.input_ids.shape == (2, 7)
    assert batch.attention_mask.sum(1).tolist() == [3, 5]
    assert batch.targets.counts.tolist() == [1.0, 3.0]
    assert batch.targets.labels.tolist() == [3, 3, 4, 5]
    with pytest.raises(ValueError, match="shorter than the longest row"):
        Batcher(items, torch.device("cpu")).batch([[0], [1]], width=4)


def test_layout_spreads_members_first_then_shards_their_batches():
    # W <= M: a group per rank, each holding members r, r + W, ...; nothing shared.
    assert [Layout(r, 2, 4).local_members for r in range(2)] == [[0, 2], [1, 3]]
    assert [Layout(r, 2, 3).local_members for r in range(2)] == [[0, 2], [1]]
    assert Layout(0, 2, 4).collection_batches(5) == [0, 1, 2, 3, 4]
    assert Layout(1, 2, 4).rows(np.arange(4)).tolist() == [0, 1, 2, 3]
    # 5 ranks, 2 members: blocks of consecutive ranks, the first one rank longer.
    five = [Layout(r, 5, 2) for r in range(5)]
    assert [t.local_members for t in five] == [[0], [0], [0], [1], [1]]
    assert [(t.group, t.shard, t.shards) for t in five] == [
        (0, 0, 3), (0, 1, 3), (0, 2, 3), (1, 0, 2), (1, 1, 2)]
    assert [r for r in range(5) if five[r].owns(0)] == [0]
    assert [r for r in range(5) if five[r].owns(1)] == [3]
    assert [five[r].collection_batches(7) for r in (0, 1, 2)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert [five[r].collection_batches(7) for r in (3, 4)] == [[0, 2, 4, 6], [1, 3, 5]]
    assert [five[r].rows(np.arange(10, 17)).tolist() for r in (0, 1, 2)] == [
        [10, 11], [12, 13], [14, 15, 16]]
    # One group on 4 ranks: every rank holds both members, a quarter of each batch.
    one = [Layout(r, 4, 2, groups=1) for r in range(4)]
    assert all(t.local_members == [0, 1] and t.shards == 4 for t in one)
    assert one[3].describe(2) == {"rank": 2, "group": 0, "members": [0, 1], "shard": 2,
                                  "shards": 4}


@pytest.mark.parametrize("world,members,groups", [(1, 3, 0), (2, 2, 1), (3, 2, 0), (4, 2, 0),
                                                  (4, 4, 2), (7, 3, 0), (8, 4, 1)])
def test_layout_trains_each_example_of_each_member_once(world, members, groups):
    """Over all ranks, every member's batch (of any size, 0 included) is run exactly once,
    in order, and every member is owned by exactly one rank."""
    layouts = [Layout(r, world, members, groups) for r in range(world)]
    for size in range(10):
        batch = np.arange(100, 100 + size)
        for m in range(members):
            ran = np.concatenate([t.rows(batch) for t in layouts if m in t.local_members])
            assert ran.tolist() == batch.tolist()
    for m in range(members):
        assert sum(t.owns(m) for t in layouts) == 1
    spread = np.concatenate([t.spread(np.arange(23)) for t in layouts])
    assert sorted(spread.tolist()) == list(range(23))


def test_layouts_that_cannot_work_are_refused_in_one_line():
    with pytest.raises(gf.GradfilterError, match=r"^--member-groups 3 is more than --members 2"):
        Comm(0, 4).layout(2, 3)
    with pytest.raises(gf.GradfilterError,
                       match=r"^--member-groups 2 needs at least 2 processes, this run has 1 "):
        Comm().layout(4, 2)
    with pytest.raises(gf.GradfilterError, match="at least 1"):
        Comm().layout(4, 0)
    assert Comm(1, 4).layout(2) == Layout(1, 4, 2, 2)


def test_a_checkpoint_dir_in_use_is_refused(tmp_path, gpt2_proxy):
    from conftest import alpaca_records, write_json

    data = write_json(tmp_path / "a.json", alpaca_records(4))
    holder = Checkpoint(tmp_path / "ckpt", {"lr": 1.0}, Comm(), Layout())
    holder.open()
    try:
        with pytest.raises(gf.GradfilterError, match="is in use by another run"):
            gf.score(data, tmp_path / "t.parquet",
                     gf.ScoreConfig(proxy=gpt2_proxy, members=1, device="cpu"),
                     progress=False, checkpoint_dir=tmp_path / "ckpt")
    finally:
        holder.close()
