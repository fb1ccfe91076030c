"""The Python API: score a dataset into a statistics table, select from it, or both."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import distributed, formats
from .checkpoint import Checkpoint
from .ensemble import LoRAEnsemble
from .errors import GradfilterError
from .formats import Format, ReadReport, Record
from .gradstats import RawStats, ScoreConfig, stats_table, train_and_collect
from .outputs import atomic_path, device_description, write_run_record
from .proxy import (
    default_targets,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from .selection import Selection, select_top
from .tokenization import Encoded, encode, resolve_template
from .utilities import utility_scores, with_utilities


@dataclass(frozen=True)
class Dataset:
    path: Path
    records: list[Record]
    format: Format
    container: formats.Container
    report: ReadReport
    fields: dict[str, str]

    def turns(self, record: Record) -> list[formats.Turn]:
        return formats.to_turns(record, self.format, self.path, self.fields)


def read_dataset(path: str | Path, fmt: Format | None = None, limit: int | None = None,
                 fields: dict[str, str] | None = None) -> Dataset:
    """All records of a file (the first `limit` if given) and its detected format.

    `fields` maps canonical field names onto the file's own keys (see formats.parse_fields).
    """
    path = Path(path)
    fields = fields or {}
    report = ReadReport()
    records = []
    for record in formats.iter_records(path, report):
        if limit is not None and len(records) >= limit:
            break
        records.append(record)
    if not records:
        raise GradfilterError(f"{path}: the dataset holds no records")
    if fmt is None:
        fmt = formats.detect_format(records[0], path, fields)
    elif fmt not in formats.FORMATS:
        raise GradfilterError(f"--format must be one of {list(formats.FORMATS)}, got {fmt!r}")
    return Dataset(path, records, fmt, formats.detect_container(path), report, fields)


def as_dataset(data: str | Path | Dataset, fmt: Format | None = None,
               limit: int | None = None) -> Dataset:
    """`data` itself if it was read already, else the file read now."""
    return data if isinstance(data, Dataset) else read_dataset(data, fmt, limit)


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
        if not any(turn.role == "assistant" for turn in turns):
            reasons.append("no assistant turn")
        elif item.n_response_tokens == 0:
            reasons.append("no response tokens within max_length")
        else:
            reasons.append(None)
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
    config = replace(config, lora_targets=tuple(config.lora_targets or default_targets(model)))
    ensemble = LoRAEnsemble(model, config.members, config.lora_rank, config.lora_alpha,
                            config.lora_targets, config.seed,  # type: ignore[arg-type]
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
    fmt: Format | None = None,
    limit: int | None = None,
    save_adapters: str | Path | None = None,
    skip_bad_records: bool = False,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
) -> pa.Table:
    """Train the LoRA ensemble on `data`, write the statistics table (Parquet) to `out`.

    With `checkpoint_dir` the run commits its state there every `checkpoint_every` optimiser
    steps (and collection batches) and at each epoch's end, and a rerun with the same settings
    continues from the last commit; a finished directory just rebuilds the table. Launched by
    torchrun, the ranks split the members (see `distributed`); every rank returns the table,
    rank 0 writes it.
    """
    config = config or ScoreConfig()
    config.validate()
    if checkpoint_every < 1:
        raise GradfilterError("--checkpoint-every must be at least 1")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    dataset = as_dataset(data, fmt, limit)
    device = resolve_device(config.device)  # type: ignore[arg-type]
    with distributed.session(device) as (comm, device):
        dtype = resolve_dtype(config.dtype, device)  # type: ignore[arg-type]
        tokenizer = load_tokenizer(config.proxy)
        template, encoded, reasons = _encode_all(dataset, tokenizer, config, skip_bad_records)
        prepared = _Prepared(dataset, template, encoded, reasons, device, dtype, comm)
        timings["read_and_tokenize"] = time.perf_counter() - start
        checkpoint = None
        if checkpoint_dir is not None:
            fingerprint = run_fingerprint(config, device, dtype, template, encoded, reasons)
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
        table = with_utilities(stats_table(
            len(dataset.records), prepared.scorable,
            np.array([e.n_response_tokens for e in encoded]),
            np.array([e.truncated for e in encoded]), reasons, raw, config,
        ))
        if comm.rank == 0:
            _write_score_outputs(Path(out), table, prepared, raw, config, timings, {
                "world_size": comm.world,
                "checkpoint": None if checkpoint_dir is None else
                {"dir": str(checkpoint_dir), "resumed_from_step": resumed_from},
                "save_adapters": str(save_adapters) if save_adapters else None,
            })
        comm.barrier()
    return table


def _write_score_outputs(out: Path, table: pa.Table, prepared: _Prepared, raw: RawStats,
                         config: ScoreConfig, timings: dict[str, float], extra: dict) -> None:
    start = time.perf_counter()
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    timings["write_table"] = time.perf_counter() - start
    dataset, encoded, reasons = prepared.dataset, prepared.encoded, prepared.reasons
    write_run_record(out, {
        "stage": "score",
        "data": str(dataset.path),
        "format": dataset.format,
        "template": prepared.template,
        "records": len(dataset.records),
        "scored": len(prepared.scorable),
        "unscored": {str(i): r for i, r in enumerate(reasons) if r is not None},
        "truncated": int(sum(e.truncated for e in encoded)),
        "read_warnings": dataset.report.warnings,
        "config": asdict(config),
        "seeds": {"seed": config.seed, "member_seed_rule": "derived_seed(seed, m, ...)"},
        "device": device_description(str(prepared.device)),
        "dtype": str(prepared.dtype),
        "train_loss_first_last": raw.train_losses[:1] + raw.train_losses[-1:],
        "wall_seconds": timings,
        **extra,
    })


def load_stats(path: str | Path) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise GradfilterError(f"{path}: no such statistics table")
    try:
        return pq.read_table(path)
    except pa.ArrowInvalid as exc:
        raise GradfilterError(f"{path}: not a Parquet statistics table: {exc}") from None


def select(
    data: str | Path | Dataset,
    stats: str | Path | pa.Table,
    out: str | Path,
    *,
    utility: str = "gsnr",
    ratio: float | None = None,
    count: int | None = None,
    order: str = "input",
    score_field: str | None = None,
    fmt: Format | None = None,
    limit: int | None = None,
    out_format: formats.Container | None = None,
) -> Selection:
    """Write the top records of `data` by `utility` to `out`, unchanged, in the input's
    container unless `out_format` names another."""
    start = time.perf_counter()
    table = stats if isinstance(stats, pa.Table) else load_stats(stats)
    scores = utility_scores(table, utility)
    dataset = as_dataset(data, fmt, limit)
    if table.num_rows != len(dataset.records):
        raise GradfilterError(
            f"the statistics table has {table.num_rows} rows but {dataset.path} has "
            f"{len(dataset.records)} records; score this file first"
        )
    selection = select_top(scores, ratio=ratio, count=count)
    chosen = selection.in_order(order)
    container = out_format or dataset.container
    if container not in formats.CONTAINERS:
        raise GradfilterError(f"--out-format must be one of {list(formats.CONTAINERS)}")
    formats.write_records(
        Path(out), dataset.path, [dataset.records[i] for i in chosen], container, score_field,
        [float(scores[i]) for i in chosen] if score_field else None,
    )
    write_run_record(Path(out), {
        "stage": "select",
        "data": str(dataset.path),
        "stats": str(stats) if not isinstance(stats, pa.Table) else None,
        "records": len(dataset.records),
        "utility": utility,
        "ratio": ratio,
        "count": count,
        "order": order,
        "out_format": container,
        "score_field": score_field,
        "selected": len(chosen),
        "requested": selection.requested,
        "nonfinite_scores": selection.n_nonfinite,
        "wall_seconds": {"select": time.perf_counter() - start},
    })
    return selection
