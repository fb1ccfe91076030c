"""Training the LoRA ensemble: M members, one batched model, resumable step by step.

Each member minimises its own batch loss (the mean of its examples' losses), with its own
gradient clipping; one AdamW over the stacked tensors is exactly M optimisers (elementwise).
A step runs as micro-batches within the token budget: each backs up sum(its losses) / (the
step's rows per member), so the accumulated gradient is the whole batch's mean; clipping and the
optimiser step follow the last micro-batch.
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
from .batching import Batch, Batcher, member_batches, micro_batches
from .checkpoint import Checkpoint, NullCheckpoint
from .ensemble import LoRAEnsemble, linear_warmup_decay, per_example_losses

WARMUP_RATIO = 0.03


class Trainer:
    """Trains the members the ensemble holds, committing to `checkpoint` as it goes."""

    def __init__(self, ensemble: LoRAEnsemble, batcher: Batcher, lengths: np.ndarray,
                 config: ScoreConfig, autocast: torch.autocast,
                 checkpoint: Checkpoint | NullCheckpoint, batch_tokens: int) -> None:
        self.ensemble, self.batcher, self.lengths = ensemble, batcher, lengths
        self.config, self.autocast, self.checkpoint = config, autocast, checkpoint
        self.batch_tokens = batch_tokens
        self.n = len(lengths)
        self.steps_per_epoch = -(-self.n // config.batch_size)
        self.optimizer = torch.optim.AdamW(ensemble.parameters(), lr=config.lr, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            linear_warmup_decay(config.epochs * self.steps_per_epoch, WARMUP_RATIO))
        self.step = 0
        self.losses_done = torch.zeros(0, ensemble.members)  # [steps, members held], on host
        self.losses_pending: list[torch.Tensor] = []  # per step [members held], on device

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

    def finished_epoch(self, epoch: int) -> bool:
        return self.step >= epoch * self.steps_per_epoch

    def train_epoch(self, epoch: int, bars: Progress) -> None:
        """The rest of `epoch`'s optimiser steps (all of them unless resumed inside it)."""
        config, ensemble = self.config, self.ensemble
        batches = member_batches(self.lengths, config.batch_size, config.members, config.seed,
                                 epoch, config.length_bucketing)
        mine = [batches[m] for m in ensemble.member_ids]
        first = (epoch - 1) * self.steps_per_epoch
        done_rows = sum(len(b) for b in mine[0][: self.step - first])
        task = bars.add_task(f"train epoch {epoch}/{config.epochs} x{config.members} members",
                             total=self.n, completed=done_rows, rate="")
        start = time.perf_counter()
        for k in range(self.step - first, self.steps_per_epoch):
            rows = len(mine[0][k])
            parts = micro_batches([member[k] for member in batches], self.lengths,
                                  self.batch_tokens)
            self._step([self.batcher.batch([member[k][part] for member in mine], width)
                        for part, width in parts], rows)
            advance_bar(bars, task, rows, start, done_rows)
            at_end = k == self.steps_per_epoch - 1
            if self.checkpoint.due(self.step, at_end):
                keep = at_end and epoch in (config.early, config.late)
                self.checkpoint.save_train(self.step, self._member_payloads(),
                                           self._common_payload(), keep)

    def _step(self, micro: list[Batch], rows: int) -> None:
        """One optimiser step over `rows` examples per member, given as micro-batches."""
        ensemble = self.ensemble
        losses = []
        for batch in micro:
            with self.autocast:
                part = per_example_losses(ensemble.model, batch.input_ids, batch.attention_mask,
                                          batch.response_mask, batch.targets)
            (part.sum() / rows).backward()
            losses.append(part.detach().view(ensemble.members, -1))
        ensemble.clip_per_member(self.config.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        # kept on the device: no host sync per step
        self.losses_pending.append(torch.cat(losses, 1).mean(1))
        self.step += 1

    def member_losses(self) -> dict[int, torch.Tensor]:
        """Each held member's mean training loss per step so far (float32, host)."""
        if self.losses_pending:
            new = torch.stack(self.losses_pending).float().cpu()
            self.losses_done = torch.cat([self.losses_done, new])
            self.losses_pending = []
        return {m: self.losses_done[:, k] for k, m in enumerate(self.ensemble.member_ids)}

    def _member_payloads(self) -> dict[int, dict]:
        losses = self.member_losses()
        return {m: {**state, "losses": losses[m].clone()}
                for m, state in self.ensemble.member_states(self.optimizer).items()}

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
