"""The expensive stage: train the LoRA ensemble and measure every example's gradients.

After the early epoch s and the late epoch t, a collection pass (no parameter update, model in
eval mode, its own batch size) records for every example i and member m the loss L_i^(m,e) and
the squared norm n_i^(m,e) of the gradient of L_i alone, taken from the one batched backward.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .ensemble import (
    LoRAEnsemble,
    RowGradRecorder,
    derived_seed,
    linear_warmup_decay,
    per_example_losses,
)
from .errors import GradfilterError
from .tokenization import Encoded

WARMUP_RATIO = 0.03


@dataclass(frozen=True)
class ScoreConfig:
    """Every setting that affects the scores; method.md §2-3 defaults."""

    proxy: str = "gpt2"
    members: int = 4
    epochs: int = 2
    early: int = 1
    late: int = 2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] | None = None
    lr: float = 2e-4
    batch_size: int = 16
    collect_batch_size: int = 32
    max_length: int = 512
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    template: str = "auto"
    turns: str = "all"

    def validate(self) -> None:
        positive = ("members", "epochs", "lora_rank", "batch_size", "collect_batch_size",
                    "max_length")
        for name in positive:
            if getattr(self, name) < 1:
                raise GradfilterError(f"--{name.replace('_', '-')} must be at least 1")
        if not 1 <= self.early < self.late <= self.epochs:
            raise GradfilterError(
                f"need 1 <= --early < --late <= --epochs, got early={self.early}, "
                f"late={self.late}, epochs={self.epochs}"
            )
        if self.lr <= 0 or self.lora_alpha <= 0:
            raise GradfilterError("--lr and --lora-alpha must be positive")


@dataclass
class RawStats:
    """Per-example losses and squared gradient norms, [collected epoch][example, member]."""

    losses: dict[int, np.ndarray] = field(default_factory=dict)
    sqnorms: dict[int, np.ndarray] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    train_losses: list[float] = field(default_factory=list)


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


class Batcher:
    """Pads member-major batches: rows [m*b:(m+1)*b] belong to member m."""

    def __init__(self, encoded: Sequence[Encoded], device: torch.device) -> None:
        self.encoded = encoded
        self.device = device

    def batch(self, per_member: Sequence[Sequence[int]]):
        items = [self.encoded[i] for rows in per_member for i in rows]
        width = max(len(item.input_ids) for item in items)
        ids = np.zeros((len(items), width), dtype=np.int64)
        attention = np.zeros((len(items), width), dtype=bool)
        response = np.zeros((len(items), width), dtype=bool)
        for r, item in enumerate(items):
            n = len(item.input_ids)
            ids[r, :n] = item.input_ids
            attention[r, :n] = True
            response[r, :n] = item.response_mask
        to = self.device
        return (torch.from_numpy(ids).to(to), torch.from_numpy(attention).long().to(to),
                torch.from_numpy(response).to(to))


def member_orders(n: int, members: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Member m's data order in an epoch: a permutation seeded by (seed, m, epoch) only."""
    orders = []
    for m in range(members):
        generator = torch.Generator().manual_seed(derived_seed(seed, m, epoch, 1))
        orders.append(torch.randperm(n, generator=generator).numpy())
    return orders


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def train_and_collect(
    ensemble: LoRAEnsemble,
    encoded: Sequence[Encoded],
    scorable: np.ndarray,
    config: ScoreConfig,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
    on_collected=None,
) -> RawStats:
    """Train every member for `epochs` epochs; after `early` and `late`, run a collection pass.

    `scorable` are the indices of examples with at least one response token; only they are
    trained on and measured. `on_collected(epoch)` runs after each collection (adapter export).
    """
    stats = RawStats()
    batcher = Batcher(encoded, device)
    n = len(scorable)
    if n == 0:
        raise GradfilterError("no example has a response token left to score")
    steps_per_epoch = -(-n // config.batch_size)
    optimizer = torch.optim.AdamW(ensemble.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_warmup_decay(config.epochs * steps_per_epoch, WARMUP_RATIO)
    )
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    step_losses: list[torch.Tensor] = []
    with progress_bars(progress) as bars:
        for epoch in range(1, config.epochs + 1):
            start = time.perf_counter()
            orders = member_orders(n, config.members, config.seed, epoch)
            task = bars.add_task(f"train epoch {epoch}/{config.epochs} x{config.members} members",
                                 total=n, rate="")
            for step in chunks(n, config.batch_size):
                ids, attention, response = batcher.batch([scorable[o[step]] for o in orders])
                with autocast:
                    losses = per_example_losses(ensemble.model, ids, attention, response)
                rows = step.stop - step.start
                (losses.sum() / rows).backward()
                ensemble.clip_per_member(config.grad_clip)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step_losses.append(losses.detach().mean())  # no host sync per step
                advance_bar(bars, task, rows, start)
            stats.phase_seconds[f"train_epoch{epoch}"] = time.perf_counter() - start
            if epoch in (config.early, config.late):
                start = time.perf_counter()
                losses_e, sqnorms_e = collect(ensemble, batcher, scorable, config, autocast, bars,
                                              epoch)
                stats.losses[epoch], stats.sqnorms[epoch] = losses_e, sqnorms_e
                stats.phase_seconds[f"collect_epoch{epoch}"] = time.perf_counter() - start
                if on_collected is not None:
                    on_collected(epoch)
    stats.train_losses = torch.stack(step_losses).tolist()
    return stats


def advance_bar(bars: Progress, task, rows: int, start: float) -> None:
    bars.advance(task, rows)
    done = bars.tasks[task].completed
    bars.update(task, rate=f"{done / max(time.perf_counter() - start, 1e-9):.1f} ex/s")


def collect(ensemble: LoRAEnsemble, batcher: Batcher, scorable: np.ndarray, config: ScoreConfig,
            autocast, bars: Progress, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """One pass in input order: every member's loss and squared gradient norm per example."""
    members = config.members
    n = len(scorable)
    losses = np.zeros((n, members), dtype=np.float64)
    sqnorms = np.zeros((n, members), dtype=np.float64)
    start = time.perf_counter()
    task = bars.add_task(f"collect gradients after epoch {epoch}", total=n, rate="")
    for step in chunks(n, config.collect_batch_size):
        rows = step.stop - step.start
        ids, attention, response = batcher.batch([scorable[step]] * members)
        recorder = RowGradRecorder(rows * members, ids.device)
        ensemble.set_recorder(recorder)
        try:
            with autocast:
                row_losses = per_example_losses(ensemble.model, ids, attention, response)
            row_losses.sum().backward()
        finally:
            ensemble.set_recorder(None)
        for p in ensemble.parameters():
            p.grad = None
        losses[step] = row_losses.detach().double().cpu().numpy().reshape(members, rows).T
        sqnorms[step] = recorder.sqnorms.double().cpu().numpy().reshape(members, rows).T
        advance_bar(bars, task, rows, start)
    return losses, sqnorms


def stats_table(n_records: int, scorable: np.ndarray, head: dict[str, pa.Array], raw: RawStats,
                config: ScoreConfig) -> pa.Table:
    """One row per input record: `head` (record_columns), then raw statistics (NaN where
    unscored) in input order."""
    columns = dict(head)
    for epoch in (config.early, config.late):
        for name, values in (("loss", raw.losses[epoch]), ("sqnorm", raw.sqnorms[epoch])):
            for m in range(config.members):
                full = np.full(n_records, np.nan)
                full[scorable] = values[:, m]
                columns[f"{name}_e{epoch}_m{m}"] = pa.array(full)
    meta = {"method": "gsnr", "early": config.early, "late": config.late,
            "members": config.members, "config": asdict(config)}
    return pa.table(columns).replace_schema_metadata({"gradfilter": json.dumps(meta)})


def record_columns(n_records: int, n_response_tokens: np.ndarray, truncated: np.ndarray,
                   skip_reasons: list[str | None]) -> dict[str, pa.Array]:
    """The columns every statistics table starts with, whatever the method."""
    return {
        "index": pa.array(np.arange(n_records, dtype=np.int64)),
        "n_response_tokens": pa.array(n_response_tokens.astype(np.int32)),
        "truncated": pa.array(truncated.astype(bool)),
        "skip_reason": pa.array(skip_reasons, type=pa.string()),
    }
