"""Training the LoRA ensemble: M members, one batched model, resumable step by step.

Each member minimises its own batch loss (the mean of its examples' losses), with its own
gradient clipping; one AdamW over the stacked tensors is exactly M optimisers (elementwise).
A step runs as micro-batches within the token budget: each backs up sum(its losses) / (the
step's rows per member), so the accumulated gradient is the whole batch's mean; clipping and the
optimiser step follow the last micro-batch.

Under torchrun a step's batch may be shared by the ranks of a member group (distributed.py):
each rank runs its slice of every member's batch, still dividing by the whole batch's rows,
and the gradients are summed over the group before clipping, so the step is the whole batch's.

With `collect="during"` the training passes of epochs s and t record every example's loss and
squared gradient norm (and sketch) per member (method.md §3), from the same forward and
backward, at the parameters the example met (before the step that uses it). They are held per
example and member and go into every training checkpoint, so a run killed inside epoch t resumes
to the same table.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from ..config import ScoreConfig
from ..progress import advance_bar
from .batching import Batcher, member_batches, micro_batches
from .checkpoint import Checkpoint, NullCheckpoint
from .distributed import Comm, Layout
from .ensemble import LoRAEnsemble, RowGradRecorder, linear_warmup_decay, recorded_backward
from .statistics import Collected

WARMUP_RATIO = 0.03


class Trainer:
    """Trains the members the ensemble holds, on this rank's slice of their batches (as
    `layout` says), committing to `checkpoint` as it goes."""

    def __init__(self, ensemble: LoRAEnsemble, batcher: Batcher, lengths: np.ndarray,
                 config: ScoreConfig, autocast: torch.autocast,
                 checkpoint: Checkpoint | NullCheckpoint, batch_tokens: int, *,
                 layout: Layout, comm: Comm) -> None:
        self.ensemble, self.batcher, self.lengths = ensemble, batcher, lengths
        self.config, self.autocast, self.checkpoint = config, autocast, checkpoint
        self.batch_tokens = batch_tokens
        self.layout, self.comm = layout, comm
        self.trained: dict[int, int] = {}  # epoch -> examples of each held member run here
        self.sketch = (ensemble.sketch_projection(config.sketch_dim, config.seed)
                       if config.sketch_dim and config.collect == "during" else None)
        self.n = len(lengths)
        self.steps_per_epoch = -(-self.n // config.batch_size)
        self.optimizer = torch.optim.AdamW(ensemble.parameters(), lr=config.lr, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            linear_warmup_decay(config.epochs * self.steps_per_epoch, WARMUP_RATIO))
        self.step = 0
        self.losses_done = torch.zeros(0, ensemble.members)  # [steps, members held], on host
        self.losses_pending: list[torch.Tensor] = []  # per step [members held], on device
        self.during = DuringRecords(self.n, ensemble.members,
                                    self.sketch.dim if self.sketch else 0)

    def restore(self) -> None:
        """Continue from the checkpoint's last committed step, if it has one."""
        step = self.checkpoint.manifest.step
        if step == 0:
            return
        members, common = self.checkpoint.load_train(self.ensemble.member_ids)
        self.ensemble.load_member_states(members, self.optimizer, common)
        self.schedule.load_state_dict(common["schedule"])
        _set_rng_state(common["rng"])
        self.step = step
        self.losses_done = torch.stack([members[m]["losses"] for m in self.ensemble.member_ids],
                                       1)
        for k, m in enumerate(self.ensemble.member_ids):
            if self.layout.owns(m):  # the owner alone carries what earlier runs recorded
                self.during.merge(k, [members[m].get("recorded", {}),
                                      *members[m].get("recorded_parts", [])])

    def records(self, epoch: int) -> bool:
        """Whether `epoch`'s training passes record the statistics (collect=during)."""
        config = self.config
        return config.collect == "during" and epoch in (config.early, config.late)

    def recorded_epoch(self, epoch: int) -> Collected:
        """The statistics the training passes of `epoch` recorded here (this rank's slices;
        the gather checks that the ranks together recorded every value)."""
        return self.during.flushed(epoch)

    def finished_epoch(self, epoch: int) -> bool:
        return self.step >= epoch * self.steps_per_epoch

    def train_epoch(self, epoch: int, bars: Progress) -> None:
        """The rest of `epoch`'s optimiser steps (all of them unless resumed inside it)."""
        config, ensemble = self.config, self.ensemble
        batches = member_batches(self.lengths, config.batch_size, config.members, config.seed,
                                 epoch, config.length_bucketing)
        # This rank's slice of every member's batches: of all M members, so that the padded
        # widths do not depend on which members a rank holds.
        slices = [[self.layout.rows(batch) for batch in member] for member in batches]
        mine = [slices[m] for m in ensemble.member_ids]
        first = (epoch - 1) * self.steps_per_epoch
        done_rows = sum(len(b) for b in mine[0][: self.step - first])
        task = bars.add_task(f"train epoch {epoch}/{config.epochs} x{config.members} members",
                             total=sum(len(b) for b in mine[0]), completed=done_rows, rate="")
        record = self.records(epoch)
        if record:
            self.during.start(epoch)
        start = time.perf_counter()
        for k in range(self.step - first, self.steps_per_epoch):
            step_slices = [member[k] for member in slices]
            parts = (micro_batches(step_slices, self.lengths, self.batch_tokens)
                     if len(step_slices[0]) else [])
            self._step([member[k] for member in mine], parts, len(batches[0][k]), record)
            self.trained[epoch] = self.trained.get(epoch, 0) + len(mine[0][k])
            advance_bar(bars, task, len(mine[0][k]), start, done_rows)
            at_end = k == self.steps_per_epoch - 1
            if self.checkpoint.due(self.step, at_end):
                keep = at_end and epoch in (config.early, config.late)
                self.checkpoint.save_train(self.step, self._member_payloads(epoch),
                                           self._common_payload(), keep)
        if record:
            self.during.flush(epoch)

    def _step(self, rows: list[np.ndarray], parts: list[tuple[slice, int]], size: int,
              record: bool) -> None:
        """One optimiser step of batches of `size` rows per member, of which this rank runs
        each held member's `rows` (example positions, maybe none) as the micro-batches `parts`
        (row slice, padded width); with `record`, every example's loss and squared gradient
        norm are kept. The gradients and loss sums are summed over the member group."""
        ensemble = self.ensemble
        loss_sums = torch.zeros(ensemble.members, device=self.batcher.device)
        for part, width in parts:
            batch = self.batcher.batch([member[part] for member in rows], width)
            recorder = (RowGradRecorder(batch.input_ids.shape[0], batch.input_ids.device,
                                        self.sketch, scale=size) if record else None)
            losses = recorded_backward(ensemble, batch, recorder, self.autocast, size
                                       ).view(ensemble.members, -1)
            loss_sums += losses.sum(1)
            if recorder is not None:
                sketches = (None if recorder.sketches is None else
                            recorder.sketches.view(ensemble.members, len(rows[0][part]), -1))
                self.during.add([member[part] for member in rows], losses,
                                recorder.sqnorms.view(ensemble.members, -1), sketches)
        params = ensemble.parameters()
        for p in params:  # a rank whose slice of this step is empty adds zeros
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.comm.group_sum(self.layout, [*(p.grad for p in params), loss_sums])
        ensemble.clip_per_member(self.config.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        # kept on the device: no host sync per step
        self.losses_pending.append(loss_sums / size)
        self.step += 1

    def member_losses(self) -> dict[int, torch.Tensor]:
        """Each held member's mean training loss per step so far (float32, host)."""
        if self.losses_pending:
            new = torch.stack(self.losses_pending).float().cpu()
            self.losses_done = torch.cat([self.losses_done, new])
            self.losses_pending = []
        return {m: self.losses_done[:, k] for k, m in enumerate(self.ensemble.member_ids)}

    def _member_payloads(self, epoch: int) -> dict[int, dict]:
        losses = self.member_losses()
        self.during.flush(epoch)
        payloads = {m: {**state, "losses": losses[m].clone()}
                    for m, state in self.ensemble.member_states(self.optimizer).items()}
        for k, m in enumerate(self.ensemble.member_ids):
            if self.during.epochs:
                payloads[m]["recorded"] = self.during.columns(k)
        return payloads

    def _common_payload(self) -> dict:
        return {**self.ensemble.shared_optimizer_state(self.optimizer),
                "schedule": self.schedule.state_dict(), "rng": _rng_state()}

    @contextmanager
    def adapters_after(self, epoch: int) -> Iterator[None]:
        """The ensemble holding the adapters of the end of `epoch` (a kept snapshot if the run
        resumed past it), back to the current ones after."""
        end = epoch * self.steps_per_epoch
        if self.step == end:
            yield
            return
        members = self.ensemble.member_ids
        assert not isinstance(self.checkpoint, NullCheckpoint), \
            "only a resumed run can be past a collected epoch"
        self.ensemble.load_member_states(self.checkpoint.load_members(end, members))
        try:
            yield
        finally:
            self.ensemble.load_member_states(self.checkpoint.load_members(self.step, members))


class DuringRecords:
    """collect=during: the statistics the training passes record, per epoch, example and held
    member. Each micro-batch's values stay on the device until `flush` (one host sync at each
    checkpoint and at the epoch's end)."""

    def __init__(self, n: int, members: int, sketch_dim: int) -> None:
        self.n, self.members, self.sketch_dim = n, members, sketch_dim
        self.epochs: dict[int, Collected] = {}  # epoch -> held members' stats
        # per micro-batch: (each held member's rows, losses, sqnorms [members held, rows],
        # sketches [members held, rows, dim] or None)
        self.pending: list[tuple[list[np.ndarray], torch.Tensor, torch.Tensor,
                                 torch.Tensor | None]] = []

    def start(self, epoch: int) -> Collected:
        """`epoch`'s statistics, empty where nothing was recorded yet."""
        return self.epochs.setdefault(epoch, Collected.empty(self.n, self.members,
                                                             self.sketch_dim))

    def add(self, rows: list[np.ndarray], losses: torch.Tensor, sqnorms: torch.Tensor,
            sketches: torch.Tensor | None) -> None:
        self.pending.append((rows, losses, sqnorms, sketches))

    def flush(self, epoch: int) -> None:
        """The pending recorded statistics of `epoch`, to the host (one sync)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        losses, sqnorms = (torch.cat([p[i] for p in pending], 1).double().cpu().numpy()
                           for i in (1, 2))
        sketches = (None if not self.sketch_dim else
                    torch.cat([p[3] for p in pending], 1).cpu().numpy())
        for k in range(self.members):
            rows = np.concatenate([p[0][k] for p in pending])
            self.epochs[epoch].put(rows, k, losses[k], sqnorms[k],
                                   None if sketches is None else sketches[k])

    def merge(self, k: int, parts: list[dict[str, Any]]) -> None:
        """Held member k's records as a checkpoint holds them (its owner's payload, and what
        other ranks recorded of it), merged by example."""
        for part in parts:
            for epoch, column in part.items():
                self.start(int(epoch)).merge_column(k, column)

    def flushed(self, epoch: int) -> Collected:
        """`epoch`'s statistics recorded here, flushed (under torchrun, this rank's slices:
        `collection._gather` checks that the ranks together recorded every value)."""
        self.flush(epoch)
        return self.epochs[epoch]

    def columns(self, k: int) -> dict[str, Any]:
        """Held member k's recorded statistics of every epoch, for its checkpoint payload."""
        return {str(e): c.column(k) for e, c in self.epochs.items()}


def _rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
