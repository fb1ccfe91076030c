"""The Python API: score a dataset into a statistics table, select from it, or both.

Scoring (torch, the proxy) is here; reading (`dataset`) and selecting (`subset`) need no model.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from . import distributed
from .baselines import NEEDS_MODEL, baseline_columns, proxy_forward
from .checkpoint import Checkpoint
from .config import METHODS, ScoreConfig
from .dataset import Dataset, as_dataset, read_dataset, record_notes
from .ensemble import LoRAEnsemble
from .errors import GradfilterError
from .formats import Format, unscorable_reason
from .gradstats import (
    RawStats,
    progress_bars,
    train_and_collect,
)
from .outputs import device_description, write_run_record
from .proxy import (
    default_targets,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from .subset import Subset, select, select_subset
from .table import baseline_table, gsnr_table, load_stats, record_columns, write_table
from .tokenization import Encoded, encode, resolve_template

# The API of this module: reading and selecting live in torch-free modules, re-exported here.
__all__ = ["METHODS", "Dataset", "Subset", "as_dataset", "load_stats", "read_dataset",
           "record_notes", "score", "select", "select_subset"]


def _encode_all(dataset: Dataset, tokenizer, config: ScoreConfig, skip_bad_records: bool):
    """Token ids, masks and, per record, why it cannot be scored (None if it can)."""
    template = resolve_template(tokenizer, config.template)
    encoded, reasons = [], []
    for record in dataset.records:
        try:
            turns = dataset.turns(record)
        except GradfilterError as exc:
            if not skip_bad_records:
                raise
            reasons.append(f"invalid record: {exc}")
            encoded.append(Encoded(np.zeros(0, np.int64), np.zeros(0, bool), truncated=False))
            continue
        item = encode(turns, tokenizer, template, config.max_length, config.turns)
        encoded.append(item)
        reason = unscorable_reason(turns)
        if reason is None and item.n_response_tokens == 0:
            reason = "no response tokens within max_length"
        reasons.append(reason)
    return template, encoded, reasons


def run_fingerprint(config: ScoreConfig, device: torch.device, dtype: torch.dtype,
                    template: str, encoded: list[Encoded], reasons: list[str | None]) -> dict:
    """Every setting that affects the statistics, and a hash of the tokenised data.

    A checkpoint directory keeps this; resuming with any of it different is refused. Settings
    that change no number (progress bars, checkpoint frequency, number of processes) are not in
    it. `lora_targets` None means the proxy's default targets, fixed by `proxy`.
    """
    settings = asdict(config)
    settings.update(device=device.type, dtype=str(dtype).removeprefix("torch."),
                    template=template)
    if config.lora_targets is not None:
        settings["lora_targets"] = list(config.lora_targets)
    digest = hashlib.sha256()
    for item, reason in zip(encoded, reasons, strict=True):
        digest.update(np.int64(len(item.input_ids)).tobytes())
        digest.update(item.input_ids.astype(np.int64).tobytes())
        digest.update(item.response_mask.astype(np.uint8).tobytes())
        digest.update(b"+" if reason is None else b"-")
    return {**settings, "records": len(encoded), "data_sha256": digest.hexdigest()}


@dataclass
class _Prepared:
    """The tokenised dataset of a scoring run and where it runs."""

    dataset: Dataset
    template: str
    encoded: list[Encoded]
    reasons: list[str | None]
    device: torch.device
    dtype: torch.dtype
    comm: distributed.Comm

    @property
    def scorable(self) -> np.ndarray:
        return np.array([i for i, r in enumerate(self.reasons) if r is None], dtype=np.int64)


def _train(prepared: _Prepared, config: ScoreConfig, checkpoint: Checkpoint | None,
           save_adapters: str | Path | None, progress: bool,
           timings: dict[str, float]) -> tuple[RawStats, ScoreConfig]:
    """Load the proxy, install this rank's members, train and collect: the statistics of all
    members, and the config with the LoRA targets resolved."""
    start = time.perf_counter()
    topology = prepared.comm.topology(config.members)
    torch.manual_seed(config.seed)
    model = load_model(config.proxy, prepared.device)
    config = config.with_targets(default_targets(model))
    ensemble = LoRAEnsemble(model, config.members, config.lora_rank, config.lora_alpha,
                            config.targets, config.seed,
                            member_ids=topology.local_members)
    timings["load_proxy"] = time.perf_counter() - start

    def export(epoch: int) -> None:
        for k, m in enumerate(ensemble.member_ids):
            if topology.owns(m):
                ensemble.save_member(k, Path(save_adapters) / f"epoch{epoch}" / f"member{m}",
                                     config.proxy)

    raw = train_and_collect(ensemble, prepared.encoded, prepared.scorable, config,
                            prepared.device, prepared.dtype, progress,
                            export if save_adapters is not None else None,
                            checkpoint=checkpoint, comm=prepared.comm)
    timings.update(raw.phase_seconds)
    return raw, config


def score(
    data: str | Path | Dataset,
    out: str | Path,
    config: ScoreConfig | None = None,
    *,
    method: str = "gsnr",
    fmt: Format | None = None,
    limit: int | None = None,
    save_adapters: str | Path | None = None,
    skip_bad_records: bool = False,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
) -> pa.Table:
    """Score `data` with `method` and write the statistics table (Parquet) to `out`.

    `gsnr` trains the LoRA ensemble (all G-SNR utilities); the baselines of method.md §6 need
    at most a forward pass of the proxy. With `checkpoint_dir` a gsnr run commits its state
    there every `checkpoint_every` optimiser steps (and collection batches) and at each epoch's
    end, and a rerun with the same settings continues from the last commit; a finished
    directory just rebuilds the table. Launched by torchrun, the ranks split the members (see
    `distributed`); every rank returns the table, rank 0 writes it.
    """
    config = config or ScoreConfig()
    config.validate()
    if method not in METHODS:
        raise GradfilterError(f"--method must be one of {list(METHODS)}, got {method!r}")
    if checkpoint_every < 1:
        raise GradfilterError("--checkpoint-every must be at least 1")
    if checkpoint_dir is not None and method != "gsnr":
        raise GradfilterError("--checkpoint-dir is for --method gsnr (baselines are one pass)")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    dataset = as_dataset(data, fmt, limit, skip_bad_records)
    device = resolve_device(config.device)
    with distributed.session(device) as (comm, device):
        dtype = resolve_dtype(config.dtype, device)
        tokenizer = load_tokenizer(config.proxy)
        template, encoded, reasons = _encode_all(dataset, tokenizer, config, skip_bad_records)
        prepared = _Prepared(dataset, template, encoded, reasons, device, dtype, comm)
        timings["read_and_tokenize"] = time.perf_counter() - start
        head = record_columns(len(encoded), np.array([e.n_response_tokens for e in encoded]),
                              np.array([e.truncated for e in encoded]), reasons)
        if method == "gsnr":
            table, config, details = _score_gsnr(prepared, head, config, checkpoint_dir,
                                                 checkpoint_every, save_adapters, progress,
                                                 timings)
        else:
            table, details = _score_baseline(method, prepared, head, tokenizer, config,
                                             progress, timings)
        if comm.rank == 0:
            _write_score_outputs(Path(out), table, prepared, method, config, timings, details)
        comm.barrier()
    return table


def _score_gsnr(prepared: _Prepared, head, config: ScoreConfig, checkpoint_dir, checkpoint_every,
                save_adapters, progress: bool, timings: dict[str, float]):
    """Train the ensemble and collect (resumably); the table with every G-SNR utility."""
    comm = prepared.comm
    checkpoint = None
    if checkpoint_dir is not None:
        fingerprint = run_fingerprint(config, prepared.device, prepared.dtype, prepared.template,
                                      prepared.encoded, prepared.reasons)
        checkpoint = Checkpoint(checkpoint_dir, fingerprint, comm,
                                comm.topology(config.members), checkpoint_every)
    try:
        if checkpoint is not None:
            checkpoint.open()  # refuses other settings before the proxy is loaded
        resumed_from = checkpoint.manifest.step if checkpoint is not None else None
        raw, config = _train(prepared, config, checkpoint, save_adapters, progress, timings)
    finally:
        if checkpoint is not None:
            checkpoint.close()
    table = gsnr_table(head, prepared.scorable, raw.losses, raw.sqnorms, config)
    return table, config, {
        "world_size": comm.world,
        "checkpoint": None if checkpoint_dir is None else
        {"dir": str(checkpoint_dir), "resumed_from_step": resumed_from},
        "save_adapters": str(save_adapters) if save_adapters else None,
        "train_loss_first_last": raw.train_losses[:1] + raw.train_losses[-1:],
    }


def _score_baseline(method: str, prepared: _Prepared, head, tokenizer, config: ScoreConfig,
                    progress: bool, timings: dict[str, float]):
    """A baseline's table: the record columns plus the method's score columns."""
    forward = None
    with progress_bars(progress and prepared.comm.rank == 0) as bars:
        if method in NEEDS_MODEL:
            start = time.perf_counter()
            model = load_model(config.proxy, prepared.device)
            timings["load_proxy"] = time.perf_counter() - start
            forward = proxy_forward(model, tokenizer, config.collect_batch_size, prepared.device,
                                    prepared.dtype, bars)
        start = time.perf_counter()
        columns = baseline_columns(method, prepared.encoded, prepared.scorable,
                                   len(prepared.encoded), config.seed, forward)
        timings[method] = time.perf_counter() - start
    return baseline_table(head, columns, method, config), {}


def _write_score_outputs(out: Path, table: pa.Table, prepared: _Prepared, method: str,
                         config: ScoreConfig, timings: dict[str, float], details: dict) -> None:
    start = time.perf_counter()
    write_table(table, out)
    timings["write_table"] = time.perf_counter() - start
    dataset, encoded, reasons = prepared.dataset, prepared.encoded, prepared.reasons
    write_run_record(out, {
        "stage": "score",
        "method": method,
        "data": str(dataset.path),
        "format": dataset.format,
        "template": prepared.template,
        "records": len(dataset.records),
        "scored": len(prepared.scorable),
        "unscored": {str(i): r for i, r in enumerate(reasons) if r is not None},
        "truncated": int(sum(e.truncated for e in encoded)),
        **record_notes(dataset),
        "read_warnings": dataset.report.warnings,
        "config": asdict(config),
        "seeds": {"seed": config.seed, "member_seed_rule": "derived_seed(seed, m, ...)"},
        "device": device_description(str(prepared.device)),
        "dtype": str(prepared.dtype),
        **details,
        "wall_seconds": timings,
    })
