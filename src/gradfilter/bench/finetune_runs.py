"""One fine-tune run of the fine-tune benchmark (bench/finetune.py): a target trained with LoRA
(or fully) on a subset, cycled, for the budget's steps, from its seed's adapter and data order,
with the held-out loss at step 0, every `eval_every` steps and at the end; and the key that names
a finished run so that a rerun reuses it."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ScoreConfig, config_key
from ..progress import advance_bar
from ..scoring.batching import Batcher, collection_batches, member_batches
from ..scoring.ensemble import LoRAEnsemble, linear_warmup_decay, per_example_losses
from ..scoring.tokenization import Encoded
from ..scoring.trainer import WARMUP_RATIO
from ..seeds import FINETUNE_STREAM, derived_seed


@dataclass(frozen=True)
class RunSettings:
    """Everything one run trains and evaluates with, but its data and its seed."""

    steps: int
    eval_every: int
    batch_size: int
    lr: float
    lora_rank: int
    lora_alpha: float
    grad_clip: float
    eval_batch_size: int
    full_finetune: bool
    base_seed: int


def run_seed(settings: RunSettings, seed: int) -> int:
    """The seed of a run for the --seeds entry `seed`: its value's, wherever it is listed."""
    return derived_seed(settings.base_seed, seed, FINETUNE_STREAM)


def train_seed(model: torch.nn.Module, targets: tuple[str, ...], subset: list[Encoded],
               held_out: list[Encoded], settings: RunSettings, seed: int,
               device: torch.device, dtype: torch.dtype, adapters: Path | None,
               base_name: str, bars=None, untrained: list[float] | None = None) -> dict:
    """Fine-tune one target on `subset` (cycled) for `settings.steps` steps from the seed
    `seed`'s adapter and data order; the held-out losses at step 0, every `eval_every` steps
    and at the end. `untrained`, the step-0 losses of an earlier run on the same held-out set,
    is reused: every run starts as the untrained target (LoRA's B = 0; a full fine-tune from
    an unchanged copy), so step 0 is the same for all of them."""
    start = time.perf_counter()
    runner = _Runner(model, targets, subset, settings, run_seed(settings, seed), device, dtype)
    task = None if bars is None else bars.add_task(
        f"fine-tune seed {seed} on {len(subset)} records", total=settings.steps, rate="",
        unit="steps")
    losses, evals, points = [], [], []
    for step in range(settings.steps + 1):
        if step == 0 and untrained is not None:
            evals.append(list(untrained))
            points.append(step)
        elif step % settings.eval_every == 0 or step == settings.steps:
            evals.append(runner.held_out_loss(held_out))
            points.append(step)
        if step < settings.steps:
            losses.append(runner.step(step))
            if task is not None:
                advance_bar(bars, task, 1, start)
    if adapters is not None:
        runner.save(adapters / f"seed{seed}", base_name)
    return {"seed": seed, "run_seed": run_seed(settings, seed), "train_loss": losses,
            "eval_steps": points, "eval_loss": evals, "seconds": time.perf_counter() - start}


class _Runner:
    """One run's target: a LoRA adapter initialised from the run's seed on a copy of the model,
    or the whole copy with `full_finetune`."""

    def __init__(self, model: torch.nn.Module, targets: tuple[str, ...], subset: list[Encoded],
                 settings: RunSettings, seed: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.settings, self.seed, self.device = settings, seed, device
        self.model = copy.deepcopy(model)
        if settings.full_finetune:
            self.ensemble = None
            self.model.requires_grad_(True)
            params = list(self.model.parameters())
        else:
            self.ensemble = LoRAEnsemble(self.model, 1, settings.lora_rank, settings.lora_alpha,
                                         targets, seed)
            params = self.ensemble.parameters()
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_warmup_decay(settings.steps, WARMUP_RATIO))
        self.autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        self.subset = subset
        self.batcher = Batcher(subset, device)
        self.lengths = np.array([len(e.input_ids) for e in subset], dtype=np.int64)
        self.order: list[np.ndarray] = []

    def _batch_rows(self, step: int) -> np.ndarray:
        """Step k's examples: the run's epoch-seeded batches of the subset, epoch after epoch,
        as the scoring stage trains a member (the subset is cycled)."""
        while len(self.order) <= step:
            epoch = len(self.order) // -(-len(self.subset) // self.settings.batch_size) + 1
            self.order.extend(member_batches(self.lengths, self.settings.batch_size, 1,
                                             self.seed, epoch, bucketing=False)[0])
        return self.order[step]

    def step(self, step: int) -> float:
        batch = self.batcher.batch([self._batch_rows(step)])
        with self.autocast:
            losses = per_example_losses(self.model, batch.input_ids, batch.attention_mask,
                                        batch.response_mask, batch.targets)
        losses.mean().backward()
        if self.ensemble is not None:
            self.ensemble.clip_per_member(self.settings.grad_clip)
        else:
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(losses.detach().mean())

    @torch.no_grad()
    def held_out_loss(self, held_out: list[Encoded]) -> list[float]:
        """Each held-out example's mean response loss under the current target."""
        lengths = np.array([len(e.input_ids) for e in held_out], dtype=np.int64)
        batcher = Batcher(held_out, self.device)
        values = np.empty(len(held_out))
        for rows in collection_batches(lengths, self.settings.eval_batch_size, bucketing=True):
            batch = batcher.batch([rows])
            with self.autocast:
                values[rows] = per_example_losses(
                    self.model, batch.input_ids, batch.attention_mask, batch.response_mask,
                    batch.targets).double().cpu().numpy()
        return values.tolist()

    def save(self, directory: Path, base_name: str) -> None:
        if self.ensemble is not None:
            self.ensemble.save_member(0, directory, base_name)
        else:
            self.model.save_pretrained(directory)


def run_key(name: str, positions: np.ndarray, settings: RunSettings, seed: int,
            target: ScoreConfig, data_digest: str) -> str:
    """A name that changes whenever anything that affects the run changes (its seed's value,
    not the other seeds beside it)."""
    key = json.dumps({"name": name, "subset": hashlib.sha256(positions.tobytes()).hexdigest(),
                      "settings": asdict(settings), "seed": seed, "target": config_key(target),
                      "data": data_digest}, sort_keys=True, default=str)
    return f"{name}-s{seed}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
