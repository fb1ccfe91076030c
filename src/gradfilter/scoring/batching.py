"""Batch plans: which examples each member trains on at each step, and padded batches.

Member m's numbers never depend on which other members share its batch: its data order is
seeded by (seed, m, epoch) only, and every padded width is a function of the step and of all
M members' orders (which every process can compute), not of the members a process holds. So a
torchrun rank holding a subset of members pads exactly as a one-process run does.

Micro-batches: a batch (M members' rows of a training step, or a collection batch seen by all M
members) runs as micro-batches whose padded token count, over all M members' rows, stays within
a token budget. Each member's rows are cut into the same consecutive chunks, chosen from the
batch's all-member width and M, so the cut too is the same in every process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from ..seeds import ORDER_STREAM, SCHEDULE_STREAM, derived_seed
from .ensemble import ResponseTargets
from .tokenization import Encoded

BUCKET_BATCHES = 50  # length bucketing sorts within chunks of this many training batches


@dataclass(frozen=True)
class Batch:
    """A padded member-major batch: rows [k*b:(k+1)*b] belong to the k-th member held."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    targets: ResponseTargets


class Batcher:
    """Pads member-major batches to a given width (default: the longest row)."""

    def __init__(self, encoded: Sequence[Encoded], device: torch.device) -> None:
        self.encoded = encoded
        self.device = device
        self.pin = device.type == "cuda"

    def batch(self, per_member: Sequence[Sequence[int]], width: int | None = None) -> Batch:
        items = [self.encoded[i] for rows in per_member for i in rows]
        longest = max(len(item.input_ids) for item in items)
        width = longest if width is None else width
        if width < longest:
            raise ValueError(f"width {width} is shorter than the longest row ({longest})")
        ids = np.zeros((len(items), width), dtype=np.int64)
        attention = np.zeros((len(items), width), dtype=np.int64)
        response = np.zeros((len(items), width), dtype=bool)
        for r, item in enumerate(items):
            n = len(item.input_ids)
            ids[r, :n] = item.input_ids
            attention[r, :n] = 1
            response[r, :n] = item.response_mask
        targets = ResponseTargets.from_masks(ids, response).to(self.device)
        return Batch(*(self._to(a) for a in (ids, attention, response)), targets)

    def _to(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)


def member_orders(n: int, members: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Member m's data order in an epoch: a permutation seeded by (seed, m, epoch) only."""
    orders = []
    for m in range(members):
        generator = torch.Generator().manual_seed(derived_seed(seed, m, epoch, ORDER_STREAM))
        orders.append(torch.randperm(n, generator=generator).numpy())
    return orders


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def member_batches(lengths: np.ndarray, batch_size: int, members: int, seed: int, epoch: int,
                   bucketing: bool) -> list[list[np.ndarray]]:
    """Every member's training batches for an epoch: [member][step] -> example positions.

    Without bucketing, member m's order cut into batches. With it (method.md, "Length
    bucketing"): member m's order is cut into chunks of BUCKET_BATCHES batches, each chunk is
    sorted by length and cut into batches, and the full batches are ranked by their longest
    example; step k takes the batch whose rank is schedule[k], a permutation seeded by (seed,
    epoch) shared by all members, so the members' batches of a step have similar widths. The
    short last batch (if any) stays last. Member m's batches depend on (seed, m, epoch) and
    the lengths only.
    """
    n = len(lengths)
    orders = member_orders(n, members, seed, epoch)
    if not bucketing:
        return [[order[step] for step in chunks(n, batch_size)] for order in orders]
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch, SCHEDULE_STREAM))
    schedule = torch.randperm(n // batch_size, generator=generator).numpy()
    return [_bucketed(order, lengths, batch_size, schedule) for order in orders]


def _bucketed(order: np.ndarray, lengths: np.ndarray, batch_size: int,
              schedule: np.ndarray) -> list[np.ndarray]:
    batches: list[np.ndarray] = []
    for chunk in chunks(len(order), batch_size * BUCKET_BATCHES):
        part = order[chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[step] for step in chunks(len(part), batch_size))
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]
    by_width = np.argsort([lengths[b].max() for b in full], kind="stable")
    return [full[by_width[k]] for k in schedule] + short


def step_widths(batches: list[list[np.ndarray]], lengths: np.ndarray) -> np.ndarray:
    """The padded width of each training step: its longest example over all M members."""
    return np.array([max(int(lengths[member[k]].max()) for member in batches)
                     for k in range(len(batches[0]))])


def row_chunks(rows: int, width: int, members: int, budget: int) -> list[slice]:
    """Cut `rows` rows per member into near-equal consecutive chunks such that `members` x
    chunk rows x `width` stays within `budget` tokens (one row per member at the least)."""
    per_chunk = max(1, budget // (members * width))
    count = -(-rows // per_chunk)
    bounds = np.cumsum([0] + [rows // count + (k < rows % count) for k in range(count)])
    return [slice(int(a), int(b)) for a, b in pairwise(bounds)]


def micro_batches(batches: Sequence[np.ndarray], lengths: np.ndarray,
                  budget: int) -> list[tuple[slice, int]]:
    """A step's micro-batches: (row slice of each member's batch, padded width), from all M
    members' `batches` of the step (equal sizes). The width of a micro-batch is its longest
    row over the M members, so it is the same in every process whichever members it holds."""
    width = max(int(lengths[b].max()) for b in batches)
    return [(part, max(int(lengths[b[part]].max()) for b in batches))
            for part in row_chunks(len(batches[0]), width, len(batches), budget)]


def collection_batches(lengths: np.ndarray, batch_size: int, bucketing: bool) -> list[np.ndarray]:
    """The collection pass's batches: longest first with bucketing, else input order."""
    n = len(lengths)
    order = np.argsort(-lengths, kind="stable") if bucketing else np.arange(n)
    return [order[step] for step in chunks(n, batch_size)]
