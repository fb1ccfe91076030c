"""The expensive stage: train the LoRA ensemble and measure every example's gradients.

After the early epoch s and the late epoch t, a collection pass (no parameter update, model in
eval mode, its own batch size) records for every example i and member m the loss L_i^(m,e) and
the squared norm n_i^(m,e) of the gradient of L_i alone, taken from the one batched backward.
With `--collect during` there is no such pass: the training passes of epochs s and t record
the same statistics as they go (trainer.py).

With target examples, a target pass after each collected epoch (adapters of the end of that
epoch, whatever `collect` is) measures the same statistics and sketches for them: one
collection pass over the target set, nothing trained on it, never checkpointed (it is rerun on
resume, from the kept end-of-epoch adapters).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.progress import Progress

from ..config import ScoreConfig
from ..errors import GradfilterError
from ..progress import advance_bar, progress_bars
from .batching import Batcher, collection_batches, micro_batches
from .budget import batch_tokens
from .checkpoint import Checkpoint, NullCheckpoint
from .distributed import Comm, Layout
from .ensemble import LoRAEnsemble, RowGradRecorder, recorded_backward
from .statistics import Collected
from .tokenization import Encoded
from .trainer import Trainer


@dataclass
class GradientStatistics:
    """Per-example losses and squared gradient norms, [collected epoch][example, member]."""

    losses: dict[int, np.ndarray] = field(default_factory=dict)
    sqnorms: dict[int, np.ndarray] = field(default_factory=dict)
    sketches: dict[int, np.ndarray] = field(default_factory=dict)  # [example, member, dim]
    # with target examples: their losses [target, member] and sketches [target, member, dim]
    target_losses: dict[int, np.ndarray] = field(default_factory=dict)
    target_sketches: dict[int, np.ndarray] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    train_losses: list[float] = field(default_factory=list)  # per step, mean over members
    batch_tokens: int = 0  # the micro-batch token budget used
    # per rank: its place in the layout and the examples it ran (the run record's `layout`)
    layout: list[dict] = field(default_factory=list)


class Collector:
    """Collection passes over the adapters the ensemble holds, resumable batch by batch."""

    def __init__(self, ensemble: LoRAEnsemble, batcher: Batcher, lengths: np.ndarray,
                 config: ScoreConfig, autocast: torch.autocast,
                 checkpoint: Checkpoint | NullCheckpoint, layout: Layout,
                 batch_tokens: int, label: str = "collect gradients") -> None:
        self.ensemble, self.batcher, self.lengths = ensemble, batcher, lengths
        self.label = label  # the progress bar's
        self.config, self.autocast = config, autocast
        self.checkpoint, self.layout = checkpoint, layout
        self.batch_tokens = batch_tokens
        self.collected: dict[int, int] = {}  # epoch -> examples measured here
        self.sketch = (ensemble.sketch_projection(config.sketch_dim, config.seed)
                       if config.sketch_dim else None)

    def collect(self, epoch: int, bars: Progress, adapters: AbstractContextManager,
                on_collected: Callable[[int], None] | None = None) -> Collected:
        """Every held member's loss and squared gradient norm per example after `epoch`
        (under `adapters`, the context that puts that epoch's adapters in place): committed
        shards are read back, the rest of this rank's batches computed."""
        members = self.ensemble.member_ids
        batches = collection_batches(self.lengths, self.config.collect_batch_size,
                                     self.config.length_bucketing)
        result = Collected.empty(len(self.lengths), len(members), self.config.sketch_dim)
        done = np.zeros((len(batches), len(members)), dtype=bool)
        for shard in self.checkpoint.shards(epoch):
            for j, m in enumerate(shard["members"].tolist()):
                if m in members:
                    k = members.index(m)
                    sketches = shard["sketches"][:, j] if "sketches" in shard else None
                    result.put(shard["rows"], k, shard["losses"][:, j], shard["sqnorms"][:, j],
                               sketches)
                    done[shard["batches"], k] = True
        todo = [j for j in self.layout.collection_batches(len(batches)) if not done[j].all()]
        self.collected[epoch] = sum(len(batches[j]) for j in todo)
        if todo or on_collected is not None:
            with adapters:
                self._compute(epoch, batches, todo, result, bars)
                if on_collected is not None:
                    on_collected(epoch)
        if epoch not in self.checkpoint.manifest.collected:
            self.checkpoint.mark_collected(epoch)
        return result

    def _compute(self, epoch: int, batches: list[np.ndarray], todo: list[int],
                 result: Collected, bars: Progress) -> None:
        """Collection batches `todo`; results go to the host (and to a shard) once every
        `checkpoint.every` batches, not per batch."""
        if not todo:
            return
        members = self.ensemble.member_ids
        task = bars.add_task(f"{self.label} after epoch {epoch}",
                             total=sum(len(batches[j]) for j in todo), rate="")
        start = time.perf_counter()
        group = self.checkpoint.every
        for first in range(0, len(todo), group):
            part = todo[first:first + group]
            pending = []
            for j in part:
                pending.append(self._measure(batches[j]))
                advance_bar(bars, task, len(batches[j]), start)
            rows = np.concatenate([batches[j] for j in part])
            losses, sqnorms = (torch.cat([p[i].view(len(members), -1) for p in pending], 1)
                               .double().cpu().numpy().T for i in (0, 1))
            sketches = None if self.sketch is None else torch.cat(
                [p[2].view(len(members), -1, self.sketch.dim) for p in pending], 1
            ).cpu().numpy().transpose(1, 0, 2)  # [rows, members, dim]
            result.put(rows, slice(None), losses, sqnorms, sketches)
            self.checkpoint.save_shard(epoch, part, members, rows, losses, sqnorms, sketches)

    def _measure(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor,
                                                 torch.Tensor | None]:
        """Every held member's loss, squared gradient norm and sketch (None if off) for
        `rows`, member-major, left on the device; computed in micro-batches within the token
        budget (cut as if all M members were held)."""
        held = self.ensemble.members
        parts = [self._measure_micro(rows[part], width) for part, width in
                 micro_batches([rows] * self.config.members, self.lengths, self.batch_tokens)]
        losses = torch.cat([p[0].view(held, -1) for p in parts], 1)
        sqnorms = torch.cat([p[1].view(held, -1) for p in parts], 1)
        if self.sketch is None:
            return losses.view(-1), sqnorms.view(-1), None
        sketches = torch.cat([p[2].view(held, -1, self.sketch.dim) for p in parts], 1)
        return losses.view(-1), sqnorms.view(-1), sketches.view(-1, self.sketch.dim)

    def _measure_micro(self, rows: np.ndarray, width: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        ensemble = self.ensemble
        batch = self.batcher.batch([rows] * ensemble.members, width)
        recorder = RowGradRecorder(len(rows) * ensemble.members, batch.input_ids.device,
                                   self.sketch)
        row_losses = recorded_backward(ensemble, batch, recorder, self.autocast)
        for p in ensemble.parameters():
            p.grad = None
        return row_losses, recorder.sqnorms, recorder.sketches


def train_and_collect(
    ensemble: LoRAEnsemble,
    encoded: Sequence[Encoded],
    scorable: np.ndarray,
    config: ScoreConfig,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
    on_collected: Callable[[int], None] | None = None,
    *,
    checkpoint: Checkpoint | NullCheckpoint | None = None,
    comm: Comm | None = None,
    layout: Layout | None = None,
    target: Sequence[Encoded] | None = None,
) -> GradientStatistics:
    """Train every member for `epochs` epochs; after `early` and `late`, run a collection pass
    (collect=snapshot), or take the statistics the training passes of those epochs recorded
    (collect=during).

    `scorable` are the indices of examples with at least one response token; only they are
    trained on and measured. `on_collected(epoch)` runs after each collection, with the
    adapters of the end of that epoch in the ensemble (adapter export). With an opened
    `checkpoint`, the run resumes from its last commit and commits as it goes. With `comm`
    (under torchrun) the ensemble holds this rank's members only and this rank runs its slice
    of their batches, as `layout` (default: `comm.layout(config.members)`) says; the statistics
    of all members and examples are gathered and returned on every rank. With `target`
    (encoded examples, every one with a response token), each collected epoch also gets a
    target pass (module doc), its batches sliced across data shards like the pool's.
    """
    if len(scorable) == 0:
        raise GradfilterError("no example has a response token left to score")
    comm = comm or Comm()
    checkpoint = checkpoint or NullCheckpoint()
    layout = layout or comm.layout(config.members)
    if ensemble.member_ids != layout.local_members:
        raise ValueError(f"the ensemble holds members {ensemble.member_ids}, rank "
                         f"{comm.rank} of {comm.world} needs {layout.local_members}")
    batcher = Batcher([encoded[i] for i in scorable], device)
    lengths = np.array([len(encoded[i].input_ids) for i in scorable], dtype=np.int64)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    budget = batch_tokens(config.batch_tokens, ensemble.model, device, dtype, "gradients")
    checkpoint.record_run(batch_tokens=budget, world_size=comm.world)
    trainer = Trainer(ensemble, batcher, lengths, config, autocast, checkpoint, budget,
                      layout=layout, comm=comm)
    collector = Collector(ensemble, batcher, lengths, config, autocast, checkpoint, layout,
                          budget)
    stats = GradientStatistics(batch_tokens=budget)
    collected: dict[int, Collected] = {}
    targeted: dict[int, Collected] = {}
    target_collector = None if target is None else _target_collector(
        ensemble, target, config, device, autocast, layout, budget)
    trainer.restore()
    with progress_bars(progress and comm.rank == 0) as bars:
        for epoch in range(1, config.epochs + 1):
            if not trainer.finished_epoch(epoch):
                start = time.perf_counter()
                trainer.train_epoch(epoch, bars)
                stats.phase_seconds[f"train_epoch{epoch}"] = time.perf_counter() - start
            if epoch in (config.early, config.late) and config.collect == "during":
                collected[epoch] = trainer.recorded_epoch(epoch)
                _after_recorded(epoch, trainer, checkpoint, on_collected)
            elif epoch in (config.early, config.late):
                start = time.perf_counter()
                collected[epoch] = collector.collect(epoch, bars, trainer.adapters_after(epoch),
                                                     on_collected)
                stats.phase_seconds[f"collect_epoch{epoch}"] = time.perf_counter() - start
            if target_collector is not None and epoch in (config.early, config.late):
                start = time.perf_counter()
                targeted[epoch] = target_collector.collect(epoch, bars,
                                                           trainer.adapters_after(epoch))
                stats.phase_seconds[f"target_epoch{epoch}"] = time.perf_counter() - start
    if not checkpoint.manifest.finished:
        checkpoint.mark_finished()
    place = {**layout.describe(comm.rank),
             "examples_trained": [trainer.trained.get(e, 0) for e in range(1, config.epochs + 1)],
             "examples_collected": {str(e): n for e, n in collector.collected.items()}}
    _gather(stats, collected, trainer.member_losses(), place, layout, comm, config.members,
            config.sketch_dim, targeted)
    return stats


def _target_collector(ensemble: LoRAEnsemble, target: Sequence[Encoded], config: ScoreConfig,
                      device: torch.device, autocast: torch.autocast, layout: Layout,
                      budget: int) -> Collector:
    """A collector of the target examples' statistics: the pool's settings (batch size, token
    budget, sketch projection), its own rows, no checkpoint."""
    if not config.sketch_dim:
        raise GradfilterError("--target-examples needs gradient sketches (--sketch-dim above 0)")
    if not target or any(item.n_response_tokens == 0 for item in target):
        raise GradfilterError("the target examples need at least one example, each with a "
                              "response token")
    lengths = np.array([len(item.input_ids) for item in target], dtype=np.int64)
    return Collector(ensemble, Batcher(target, device), lengths, config, autocast,
                     NullCheckpoint(), layout, budget, label="target gradients")


def _after_recorded(epoch: int, trainer: Trainer, checkpoint: Checkpoint | NullCheckpoint,
                    on_collected: Callable[[int], None] | None) -> None:
    """collect=during: what a collection pass does after its statistics, without the pass:
    the adapter export at the end of `epoch`, and the checkpoint's record of it."""
    if on_collected is not None:
        with trainer.adapters_after(epoch):
            on_collected(epoch)
    if epoch not in checkpoint.manifest.collected:
        checkpoint.mark_collected(epoch)


def _gather(stats: GradientStatistics, collected: dict[int, Collected],
            member_losses: dict[int, torch.Tensor], place: dict, layout: Layout, comm: Comm,
            members: int, sketch_dim: int = 0,
            targeted: dict[int, Collected] | None = None) -> None:
    """Merge every rank's members and rows: stats of all M members on every rank; `place`,
    this rank's entry of the layout record."""
    mine = {"members": list(member_losses), "collected": collected, "place": place,
            "targeted": targeted or {},
            "train": {m: h.numpy() for m, h in member_losses.items() if layout.owns(m)}}
    parts = comm.all_gather(mine)
    stats.layout = [part["place"] for part in parts]
    for epoch in collected:
        merged = _merged(parts, "collected", epoch, members, sketch_dim)
        stats.losses[epoch], stats.sqnorms[epoch] = merged.losses, merged.sqnorms
        if merged.sketches is not None:
            stats.sketches[epoch] = merged.sketches
    for epoch in targeted or {}:
        merged = _merged(parts, "targeted", epoch, members, sketch_dim)
        assert merged.sketches is not None
        stats.target_losses[epoch], stats.target_sketches[epoch] = merged.losses, merged.sketches
    train = {m: h for part in parts for m, h in part["train"].items()}
    history = np.stack([train[m] for m in range(members)], 1).astype(np.float64)
    stats.train_losses = history.mean(1).tolist()


def _merged(parts: list[dict], key: str, epoch: int, members: int, sketch_dim: int) -> Collected:
    """One collected epoch's statistics of all members, from every rank's `parts[key]`."""
    n = len(parts[0][key][epoch].filled)
    merged = Collected.empty(n, members, sketch_dim)
    for part in parts:  # rank order; where two ranks hold a value it is the same one
        piece = part[key][epoch]
        for k, m in enumerate(part["members"]):
            take = piece.filled[:, k] & ~merged.filled[:, m]
            sketches = None if piece.sketches is None else piece.sketches[take, k]
            merged.put(np.flatnonzero(take), m, piece.losses[take, k],
                       piece.sqnorms[take, k], sketches)
    if not merged.filled.all():
        raise RuntimeError(f"{key} after epoch {epoch} is missing "
                           f"{int((~merged.filled).sum())} (example, member) values")
    return merged
