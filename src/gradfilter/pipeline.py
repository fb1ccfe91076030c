"""The Python API: score a dataset into a statistics table, select from it, or both.

Scoring (torch, the proxy) is here; reading (`dataset`) and selecting (`subset`) need no model.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .baselines import BASELINES, NEEDS_MODEL, baseline_columns, proxy_forward
from .dataset import Dataset, as_dataset, read_dataset, record_notes
from .ensemble import LoRAEnsemble
from .errors import GradfilterError
from .formats import Format
from .gradstats import (
    ScoreConfig,
    progress_bars,
    record_columns,
    stats_table,
    train_and_collect,
)
from .outputs import atomic_path, device_description, write_run_record
from .proxy import (
    default_targets,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from .subset import Subset, load_stats, select, select_subset
from .tokenization import Encoded, encode, resolve_template
from .utilities import with_utilities

# The API of this module: reading and selecting live in torch-free modules, re-exported here.
__all__ = ["METHODS", "Dataset", "Subset", "as_dataset", "load_stats", "read_dataset",
           "record_notes", "score", "select", "select_subset"]


def _encode_all(dataset: Dataset, tokenizer, config: ScoreConfig, skip_bad_records: bool):
    """Token ids, masks and, per record, why it cannot be scored (None if it can)."""
    template = resolve_template(tokenizer, config.template)  # type: ignore[arg-type]
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
        item = encode(turns, tokenizer, template, config.max_length, config.turns)  # type: ignore[arg-type]
        encoded.append(item)
        if not turns:
            reasons.append("empty conversation")
        elif not any(turn.role == "assistant" for turn in turns[1:]):
            reasons.append("no assistant turn after a prompt")
        elif item.n_response_tokens == 0:
            reasons.append("no response tokens within max_length")
        else:
            reasons.append(None)
    return template, encoded, reasons


METHODS = ("gsnr", *BASELINES)


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
) -> pa.Table:
    """Score `data` with `method` and write the statistics table (Parquet) to `out`.

    `gsnr` trains the LoRA ensemble (all G-SNR utilities); the baselines of method.md §6 need
    at most a forward pass of the proxy.
    """
    config = config or ScoreConfig()
    config.validate()
    if method not in METHODS:
        raise GradfilterError(f"--method must be one of {list(METHODS)}, got {method!r}")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    dataset = as_dataset(data, fmt, limit, skip_bad_records)
    device = resolve_device(config.device)  # type: ignore[arg-type]
    dtype = resolve_dtype(config.dtype, device)  # type: ignore[arg-type]
    tokenizer = load_tokenizer(config.proxy)
    template, encoded, reasons = _encode_all(dataset, tokenizer, config, skip_bad_records)
    scorable = np.array([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)
    timings["read_and_tokenize"] = time.perf_counter() - start
    head = record_columns(len(dataset.records), np.array([e.n_response_tokens for e in encoded]),
                          np.array([e.truncated for e in encoded]), reasons)
    if method == "gsnr":
        table, config, details = _score_gsnr(encoded, scorable, head, config, device, dtype,
                                             save_adapters, progress)
    else:
        table, details = _score_baseline(method, encoded, scorable, head, tokenizer, config,
                                         device, dtype, progress)
    timings.update(details.pop("wall_seconds"))
    start = time.perf_counter()
    with atomic_path(Path(out)) as tmp:
        pq.write_table(table, tmp)
    timings["write_table"] = time.perf_counter() - start
    write_run_record(Path(out), {
        "stage": "score",
        "method": method,
        "data": str(dataset.path),
        "format": dataset.format,
        "template": template,
        "records": len(dataset.records),
        "scored": len(scorable),
        "unscored": {str(i): r for i, r in enumerate(reasons) if r is not None},
        "truncated": int(sum(e.truncated for e in encoded)),
        **record_notes(dataset),
        "read_warnings": dataset.report.warnings,
        "config": asdict(config),
        "seeds": {"seed": config.seed, "member_seed_rule": "derived_seed(seed, m, ...)"},
        "device": device_description(str(device)),
        "dtype": str(dtype),
        **details,
        "wall_seconds": timings,
    })
    return table


def _score_gsnr(encoded, scorable, head, config: ScoreConfig, device, dtype, save_adapters,
                progress: bool):
    """Train the ensemble and collect; the table with every G-SNR utility."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    model = load_model(config.proxy, device)
    targets = config.lora_targets or default_targets(model)
    config = replace(config, lora_targets=tuple(targets))
    ensemble = LoRAEnsemble(model, config.members, config.lora_rank, config.lora_alpha,
                            config.lora_targets, config.seed)
    load_seconds = time.perf_counter() - start

    def export(epoch: int) -> None:
        if save_adapters is not None:
            for m in range(config.members):
                ensemble.save_member(m, Path(save_adapters) / f"epoch{epoch}" / f"member{m}",
                                     config.proxy)

    raw = train_and_collect(ensemble, encoded, scorable, config, device, dtype, progress, export)
    table = with_utilities(stats_table(len(encoded), scorable, head, raw, config))
    return table, config, {
        "train_loss_first_last": raw.train_losses[:1] + raw.train_losses[-1:],
        "save_adapters": str(save_adapters) if save_adapters else None,
        "wall_seconds": {"load_proxy": load_seconds, **raw.phase_seconds},
    }


def _score_baseline(method: str, encoded, scorable, head, tokenizer, config: ScoreConfig, device,
                    dtype, progress: bool):
    """A baseline's table: the record columns plus the method's score columns."""
    timings: dict[str, float] = {}
    forward = None
    with progress_bars(progress) as bars:
        if method in NEEDS_MODEL:
            start = time.perf_counter()
            model = load_model(config.proxy, device)
            timings["load_proxy"] = time.perf_counter() - start
            forward = proxy_forward(model, tokenizer, config.collect_batch_size, device, dtype,
                                    bars)
        start = time.perf_counter()
        columns = baseline_columns(method, encoded, scorable, len(encoded), config.seed, forward)
        timings[method] = time.perf_counter() - start
    table = pa.table({**head, **{name: pa.array(v) for name, v in columns.items()}})
    meta = {"method": method, "utility": method, "config": asdict(config)}
    table = table.replace_schema_metadata({"gradfilter": json.dumps(meta)})
    return table, {"wall_seconds": timings}
