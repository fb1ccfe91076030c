"""The expensive stage: train the LoRA ensemble and measure every example's gradients.

After the early epoch s and the late epoch t, a collection pass (no parameter update, model in
eval mode, its own batch size) records for every example i and member m the loss L_i^(m,e) and
the squared norm n_i^(m,e) of the gradient of L_i alone, taken from the one batched backward.

Member m's numbers never depend on which other members share its batch: its data order is
seeded by (seed, m, epoch) only, and every padded width is a function of the step and of all
M members' orders (which every process can compute), not of the members a process holds. So a
torchrun rank holding a subset of members pads exactly as a one-process run does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .checkpoint import Checkpoint
from .config import ScoreConfig
from .distributed import Comm
from .ensemble import (
    LoRAEnsemble,
    ResponseTargets,
    RowGradRecorder,
    linear_warmup_decay,
    per_example_losses,
)
from .errors import GradfilterError
from .seeds import ORDER_STREAM, SCHEDULE_STREAM, derived_seed
from .tokenization import Encoded

WARMUP_RATIO = 0.03
BUCKET_BATCHES = 50  # length bucketing sorts within chunks of this many training batches
FLUSH_BATCHES = 50  # without a checkpoint, collection results reach the host this often


@dataclass
class RawStats:
    """Per-example losses and squared gradient norms, [collected epoch][example, member]."""

    losses: dict[int, np.ndarray] = field(default_factory=dict)
    sqnorms: dict[int, np.ndarray] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    train_losses: list[float] = field(default_factory=list)  # per step, mean over members


def progress_bars(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


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


def collection_batches(lengths: np.ndarray, batch_size: int, bucketing: bool) -> list[np.ndarray]:
    """The collection pass's batches: longest first with bucketing, else input order."""
    n = len(lengths)
    order = np.argsort(-lengths, kind="stable") if bucketing else np.arange(n)
    return [order[step] for step in chunks(n, batch_size)]


MemberResults = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]  # m -> filled, loss, sqnorm


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
    checkpoint: Checkpoint | None = None,
    comm: Comm | None = None,
) -> RawStats:
    """Train every member for `epochs` epochs; after `early` and `late`, run a collection pass.

    `scorable` are the indices of examples with at least one response token; only they are
    trained on and measured. `on_collected(epoch)` runs after each collection, with the
    adapters of the end of that epoch in the ensemble (adapter export). With `checkpoint`, the
    run resumes from that directory's last commit and commits as it goes. With `comm` (under
    torchrun) the ensemble holds this rank's members only; the statistics of all members are
    gathered and returned on every rank.
    """
    if len(scorable) == 0:
        raise GradfilterError("no example has a response token left to score")
    run = _Run(ensemble, encoded, scorable, config, device, dtype, checkpoint, comm or Comm())
    with progress_bars(progress and run.comm.rank == 0) as bars:
        return run.execute(bars, on_collected)


class _Run:
    """One scoring run's training and collection, resumable from a checkpoint."""

    def __init__(self, ensemble: LoRAEnsemble, encoded: Sequence[Encoded], scorable: np.ndarray,
                 config: ScoreConfig, device: torch.device, dtype: torch.dtype,
                 checkpoint: Checkpoint | None, comm: Comm) -> None:
        self.ensemble, self.config, self.comm, self.checkpoint = ensemble, config, comm, checkpoint
        self.topology = comm.topology(config.members)
        if ensemble.member_ids != self.topology.local_members:
            raise ValueError(f"the ensemble holds members {ensemble.member_ids}, rank "
                             f"{comm.rank} of {comm.world} needs {self.topology.local_members}")
        self.scorable = scorable
        self.batcher = Batcher([encoded[i] for i in scorable], device)
        self.lengths = np.array([len(encoded[i].input_ids) for i in scorable], dtype=np.int64)
        self.n = len(scorable)
        self.steps_per_epoch = -(-self.n // config.batch_size)
        self.optimizer = torch.optim.AdamW(ensemble.parameters(), lr=config.lr, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            linear_warmup_decay(config.epochs * self.steps_per_epoch, WARMUP_RATIO))
        self.autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        self.step = 0
        self.losses_done = torch.zeros(0, ensemble.members)  # [steps, members held], on host
        self.losses_pending: list[torch.Tensor] = []  # per step [members held], on device
        self.stats = RawStats()

    def execute(self, bars: Progress, on_collected: Callable[[int], None] | None) -> RawStats:
        if self.checkpoint is not None:
            self._restore()
        results: dict[int, MemberResults] = {}
        for epoch in range(1, self.config.epochs + 1):
            if self.step < epoch * self.steps_per_epoch:
                start = time.perf_counter()
                self._train_epoch(epoch, bars)
                self.stats.phase_seconds[f"train_epoch{epoch}"] = time.perf_counter() - start
            if epoch in (self.config.early, self.config.late):
                start = time.perf_counter()
                results[epoch] = self._collect_epoch(epoch, bars, on_collected)
                self.stats.phase_seconds[f"collect_epoch{epoch}"] = time.perf_counter() - start
        if self.checkpoint is not None and not self.checkpoint.manifest.finished:
            self.checkpoint.mark_finished()
        self._gather(results)
        return self.stats

    # --- training ------------------------------------------------------------------------

    def _restore(self) -> None:
        assert self.checkpoint is not None
        manifest = self.checkpoint.manifest if self.checkpoint.opened else self.checkpoint.open()
        if manifest.step == 0:
            return
        histories = self.checkpoint.load_train(self.ensemble, self.optimizer, self.schedule)
        self.step = manifest.step
        self.losses_done = torch.stack([histories[m] for m in self.ensemble.member_ids], 1)

    def _train_epoch(self, epoch: int, bars: Progress) -> None:
        config, ensemble = self.config, self.ensemble
        batches = member_batches(self.lengths, config.batch_size, config.members, config.seed,
                                 epoch, config.length_bucketing)
        widths = step_widths(batches, self.lengths)
        mine = [batches[m] for m in ensemble.member_ids]
        first = (epoch - 1) * self.steps_per_epoch
        done_rows = sum(len(b) for b in mine[0][: self.step - first])
        task = bars.add_task(f"train epoch {epoch}/{config.epochs} x{config.members} members",
                             total=self.n, completed=done_rows, rate="")
        start = time.perf_counter()
        for k in range(self.step - first, self.steps_per_epoch):
            batch = self.batcher.batch([member[k] for member in mine], int(widths[k]))
            with self.autocast:
                losses = per_example_losses(ensemble.model, batch.input_ids,
                                            batch.attention_mask, batch.response_mask,
                                            batch.targets)
            rows = len(mine[0][k])
            (losses.sum() / rows).backward()
            ensemble.clip_per_member(config.grad_clip)
            self.optimizer.step()
            self.schedule.step()
            self.optimizer.zero_grad(set_to_none=True)
            # kept on the device: no host sync per step
            self.losses_pending.append(losses.detach().view(ensemble.members, rows).mean(1))
            self.step += 1
            advance_bar(bars, task, rows, start, done_rows)
            at_end = k == self.steps_per_epoch - 1
            if self.checkpoint is not None and (self.step % self.checkpoint.every == 0 or at_end):
                keep = at_end and epoch in (config.early, config.late)
                self.checkpoint.save_train(self.step, ensemble, self.optimizer, self.schedule,
                                           self._member_losses(), keep)

    def _member_losses(self) -> dict[int, torch.Tensor]:
        """Each held member's mean training loss per step so far (float32, host)."""
        if self.losses_pending:
            new = torch.stack(self.losses_pending).float().cpu()
            self.losses_done = torch.cat([self.losses_done, new])
            self.losses_pending = []
        return {m: self.losses_done[:, k] for k, m in enumerate(self.ensemble.member_ids)}

    @contextmanager
    def _adapters_after(self, epoch: int):
        """The ensemble holding the adapters of the end of `epoch` (a kept snapshot if the run
        resumed past it), back to the current ones after."""
        end = epoch * self.steps_per_epoch
        if self.step == end:
            yield
            return
        assert self.checkpoint is not None, "only a resumed run can be past a collected epoch"
        self.checkpoint.load_adapters(self.ensemble, end)
        try:
            yield
        finally:
            self.checkpoint.load_adapters(self.ensemble, self.step)

    # --- collection ----------------------------------------------------------------------

    def _collect_epoch(self, epoch: int, bars: Progress,
                       on_collected: Callable[[int], None] | None) -> MemberResults:
        """Every held member's loss and squared gradient norm per example after `epoch`:
        committed shards are read back, the rest of this rank's batches computed."""
        members = self.ensemble.member_ids
        batches = collection_batches(self.lengths, self.config.collect_batch_size,
                                     self.config.length_bucketing)
        filled = np.zeros((self.n, len(members)), dtype=bool)
        losses = np.full((self.n, len(members)), np.nan)
        sqnorms = np.full((self.n, len(members)), np.nan)
        done = np.zeros((len(batches), len(members)), dtype=bool)
        if self.checkpoint is not None:
            for shard in self.checkpoint.shards(epoch):
                for j, m in enumerate(shard["members"].tolist()):
                    if m not in members:
                        continue
                    k, rows = members.index(m), shard["rows"]
                    losses[rows, k] = shard["losses"][:, j]
                    sqnorms[rows, k] = shard["sqnorms"][:, j]
                    filled[rows, k] = True
                    done[shard["batches"], k] = True
        mine = self.topology.collection_batches(len(batches))
        todo = [j for j in mine if not done[j].all()]
        if todo or on_collected is not None:
            with self._adapters_after(epoch):
                self._collect_batches(epoch, batches, todo, (filled, losses, sqnorms), bars)
                if on_collected is not None:
                    on_collected(epoch)
        if self.checkpoint is not None and epoch not in self.checkpoint.manifest.collected:
            self.checkpoint.mark_collected(epoch)
        return {m: (filled[:, k], losses[:, k], sqnorms[:, k]) for k, m in enumerate(members)}

    def _collect_batches(self, epoch: int, batches: list[np.ndarray], todo: list[int],
                         into: tuple[np.ndarray, np.ndarray, np.ndarray], bars: Progress) -> None:
        """Compute collection batches `todo`; results go to the host (and to a shard) once
        every `checkpoint.every` batches, not per batch."""
        members = self.ensemble.member_ids
        if not todo:
            return
        total = sum(len(batches[j]) for j in todo)
        task = bars.add_task(f"collect gradients after epoch {epoch}", total=total, rate="")
        start = time.perf_counter()
        group = self.checkpoint.every if self.checkpoint is not None else FLUSH_BATCHES
        for first in range(0, len(todo), group):
            part = todo[first:first + group]
            pending = []
            for j in part:
                pending.append(self._measure(batches[j]))
                advance_bar(bars, task, len(batches[j]), start)
            rows = np.concatenate([batches[j] for j in part])
            loss_part, sqnorm_part = (
                torch.cat([p[i].view(len(members), -1) for p in pending], 1)
                .double().cpu().numpy().T for i in (0, 1))
            filled, losses, sqnorms = into
            losses[rows], sqnorms[rows], filled[rows] = loss_part, sqnorm_part, True
            if self.checkpoint is not None:
                self.checkpoint.save_shard(epoch, part, members, rows, loss_part, sqnorm_part)

    def _measure(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Every held member's loss and squared gradient norm for `rows`, member-major, left
        on the device."""
        ensemble = self.ensemble
        batch = self.batcher.batch([rows] * ensemble.members)
        recorder = RowGradRecorder(len(rows) * ensemble.members, batch.input_ids.device)
        ensemble.set_recorder(recorder)
        try:
            with self.autocast:
                row_losses = per_example_losses(ensemble.model, batch.input_ids,
                                                batch.attention_mask, batch.response_mask,
                                                batch.targets)
            row_losses.sum().backward()
        finally:
            ensemble.set_recorder(None)
        for p in ensemble.parameters():
            p.grad = None
        return row_losses.detach(), recorder.sqnorms

    # --- results -------------------------------------------------------------------------

    def _gather(self, results: dict[int, MemberResults]) -> None:
        """Merge every rank's members and rows: stats of all M members on every rank."""
        owned = self._member_losses()
        mine = {"results": results,
                "train": {m: owned[m].numpy() for m in owned if self.topology.owns(m)}}
        parts = self.comm.all_gather(mine)
        members = self.config.members
        for epoch in results:
            filled = np.zeros((self.n, members), dtype=bool)
            losses = np.full((self.n, members), np.nan)
            sqnorms = np.full((self.n, members), np.nan)
            for part in parts:  # rank order; where two ranks hold a value it is the same one
                for m, (has, loss, sqnorm) in part["results"][epoch].items():
                    take = has & ~filled[:, m]
                    losses[take, m], sqnorms[take, m] = loss[take], sqnorm[take]
                    filled[:, m] |= has
            if not filled.all():
                raise RuntimeError(f"collection after epoch {epoch} is missing "
                                   f"{int((~filled).sum())} (example, member) values")
            self.stats.losses[epoch], self.stats.sqnorms[epoch] = losses, sqnorms
        train = {m: h for part in parts for m, h in part["train"].items()}
        history = np.stack([train[m] for m in range(members)], 1).astype(np.float64)
        self.stats.train_losses = history.mean(1).tolist()


def advance_bar(bars: Progress, task, rows: int, start: float, already: int = 0) -> None:
    bars.advance(task, rows)
    done = bars.tasks[task].completed - already
    bars.update(task, rate=f"{done / max(time.perf_counter() - start, 1e-9):.1f} ex/s")
