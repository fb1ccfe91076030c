"""Scale-out under torchrun: the process layout (member groups x data shards) and the few
collectives scoring needs. Nothing else in scoring knows about ranks.

Launched by `torchrun` (RANK, WORLD_SIZE and LOCAL_RANK in the environment), `score` joins a
process group (gloo on CPU, nccl on CUDA, rank on cuda:LOCAL_RANK). W processes and M members
form G member groups x data shards, G = min(M, W) unless `--member-groups` says otherwise:

- Members spread first: member m belongs to group m mod G.
- The ranks are cut into G consecutive blocks, the first W mod G of them one rank longer;
  block g serves group g, its S_g ranks being the group's data shards (consecutive ranks, so
  that with one block per node no training traffic crosses nodes).
- Each optimiser step, every member's batch is cut into S_g near-equal consecutive slices, the
  j-th for the block's j-th rank. A rank trains on its slice and records the per-example
  statistics of it, at the parameters those examples met; the LoRA gradients (and the loss
  sums) are then summed over the block (`all_reduce` in the block's process group), so every
  rank of a group takes the same step, the one a single process takes on the whole batch (up to
  the order of the float sums).
- A collection pass (`--collect snapshot`) gives collection batch j to the block's
  (j mod S_g)-th rank.

With G = W (the default when W <= M) each rank is a group of its own and holds members r, r+W,
...: the ranks split the members and do not talk while training. Results are gathered to every
rank (all_gather_object) and merged by example and member; only rank 0 writes files. The first
rank of a block owns its members' checkpoint files and adapters.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import GradfilterError


@dataclass(frozen=True)
class Layout:
    """Who does what: this rank among `world`, for an ensemble of `members`, in `groups`
    member groups (0: min(members, world))."""

    rank: int = 0
    world: int = 1
    members: int = 1
    groups: int = 0

    def __post_init__(self) -> None:
        if self.groups == 0:
            object.__setattr__(self, "groups", min(self.members, self.world))
        if not 1 <= self.groups <= min(self.members, self.world) or not 0 <= self.rank < self.world:
            raise ValueError(f"no layout of {self.groups} member groups for rank {self.rank} "
                             f"of {self.world} and {self.members} members")

    def block(self, group: int) -> range:
        """The ranks serving `group`: its data shards, in order."""
        base, extra = divmod(self.world, self.groups)
        start = group * base + min(group, extra)
        return range(start, start + base + (group < extra))

    def group_of(self, rank: int) -> int:
        return next(g for g in range(self.groups) if rank in self.block(g))

    @property
    def group(self) -> int:
        return self.group_of(self.rank)

    def members_of(self, rank: int) -> list[int]:
        return list(range(self.group_of(rank), self.members, self.groups))

    @property
    def local_members(self) -> list[int]:
        return self.members_of(self.rank)

    @property
    def shard(self) -> int:
        """This rank's position in its block."""
        return self.rank - self.block(self.group).start

    @property
    def shards(self) -> int:
        """How many ranks share this rank's members' batches."""
        return len(self.block(self.group))

    def owns(self, member: int) -> bool:
        """Whether this rank writes `member`'s checkpoint files and adapters."""
        return member in self.local_members and self.shard == 0

    def rows(self, batch: np.ndarray) -> np.ndarray:
        """This rank's slice of a member's training batch (all of it when unshared)."""
        n = len(batch)
        return batch[self.shard * n // self.shards:(self.shard + 1) * n // self.shards]

    def collection_batches(self, n_batches: int) -> list[int]:
        """The collection batches this rank computes for its members."""
        return list(range(self.shard, n_batches, self.shards))

    def spread(self, items: np.ndarray) -> np.ndarray:
        """This rank's share of work that every rank can do alike (a forward-only pass)."""
        return items[self.rank::self.world]

    def describe(self, rank: int) -> dict[str, Any]:
        block = self.block(self.group_of(rank))
        return {"rank": rank, "group": self.group_of(rank), "members": self.members_of(rank),
                "shard": rank - block.start, "shards": len(block)}


class Comm:
    """The few collectives scoring needs; plain no-ops in a single process."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world
        self._blocks: dict[Layout, Any] = {}  # this rank's block's process group, per layout

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def layout(self, members: int, groups: int | None = None) -> Layout:
        """The layout of `members` over this run's processes; a layout that cannot work is
        refused in one line."""
        if groups is not None and groups < 1:
            raise GradfilterError(f"--member-groups must be at least 1, got {groups}")
        if groups is not None and groups > members:
            raise GradfilterError(f"--member-groups {groups} is more than --members {members}: "
                                  "every member group needs a member of its own")
        if groups is not None and groups > self.world:
            raise GradfilterError(f"--member-groups {groups} needs at least {groups} processes, "
                                  f"this run has {self.world} (torchrun --nproc-per-node)")
        return Layout(self.rank, self.world, members, groups or 0)

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

    def gather_filled(self, values: np.ndarray) -> np.ndarray:
        """Every rank's `values` where they are not NaN (each position filled by one rank)."""
        return np.fmax.reduce(np.stack(self.all_gather(values)))

    def group_sum(self, layout: Layout, tensors: Sequence[torch.Tensor]) -> None:
        """Sum `tensors` in place over the ranks of this rank's block (one all_reduce). Every
        rank calls it alike: the blocks' process groups are made at the first call."""
        if not self.distributed:
            return
        group = self._block_group(layout)
        if layout.shards == 1:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat, group=group)
        offset = 0
        for tensor in tensors:
            tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()

    def _block_group(self, layout: Layout) -> Any:
        if layout not in self._blocks:  # every rank makes every block's group, in order
            made = [torch.distributed.new_group(list(layout.block(g)))
                    for g in range(layout.groups)]
            self._blocks[layout] = made[layout.group]
        return self._blocks[layout]


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
