"""Scale-out under torchrun: ranks split the ensemble's members, and share collection work.

Launched by `torchrun` (RANK, WORLD_SIZE and LOCAL_RANK in the environment), `score` joins a
process group (gloo on CPU, nccl on CUDA, rank on cuda:LOCAL_RANK). With W ranks and M members:

- W <= M: rank r holds members r, r+W, r+2W, ... and trains and collects them alone; ranks do
  not talk while training (except a barrier when a checkpoint is committed).
- W > M: rank r holds member r mod M; the ranks sharing a member each train it (the same
  deterministic computation, duplicated: no broadcast needed) and split that member's
  collection batches between them, batch j going to sharer j mod S.

Results are gathered to every rank (all_gather_object), merged by example and member index;
only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import GradfilterError


@dataclass(frozen=True)
class Topology:
    """Who does what: this rank among `world`, for an ensemble of `members`."""

    rank: int = 0
    world: int = 1
    members: int = 1

    def members_of(self, rank: int) -> list[int]:
        if self.world <= self.members:
            return list(range(rank, self.members, self.world))
        return [rank % self.members]

    @property
    def local_members(self) -> list[int]:
        return self.members_of(self.rank)

    def sharers(self, member: int) -> list[int]:
        """The ranks that hold `member`, lowest first (the first one is its owner)."""
        return [r for r in range(self.world) if member in self.members_of(r)]

    def owns(self, member: int) -> bool:
        """Whether this rank writes `member`'s checkpoint files and adapters."""
        return self.sharers(member)[0] == self.rank

    def collection_batches(self, n_batches: int) -> list[int]:
        """The collection batches this rank computes (all of them unless members are shared)."""
        sharers = self.sharers(self.local_members[0])
        position, count = sharers.index(self.rank), len(sharers)
        return [j for j in range(n_batches) if j % count == position]


class Comm:
    """The few collectives scoring needs; plain no-ops in a single process."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def topology(self, members: int) -> Topology:
        return Topology(self.rank, self.world, members)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(gathered, obj)
        return gathered


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise GradfilterError(f"environment variable {name}={value!r} is not an integer") from None


def launched_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return (torch.distributed.get_rank(), torch.distributed.get_world_size(),
                _env_int("LOCAL_RANK", 0))
    return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes outputs and prints summaries."""
    return launched_world()[0] == 0


@contextmanager
def session(device: torch.device) -> Iterator[tuple[Comm, torch.device]]:
    """Join torchrun's process group if launched by it (and leave it after, if we joined).

    A group the caller initialised already is used as it is and left alone.
    """
    rank, world, local_rank = launched_world()
    if world == 1:
        yield Comm(), device
        return
    if not torch.distributed.is_available():
        raise GradfilterError("launched with WORLD_SIZE > 1 but torch.distributed is unavailable")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    created = not torch.distributed.is_initialized()
    if created:
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, device_id=device
                                             if device.type == "cuda" else None)
    try:
        yield Comm(rank, world), device
    finally:
        if created:
            torch.distributed.destroy_process_group()
