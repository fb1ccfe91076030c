"""`score`: the recipe of the expensive stage, read top to bottom.

Read the data, resolve where it runs and the config once, load the tokenizer and the proxy
once, then branch by method: the G-SNR ensemble (train and collect) or a baseline (at most a
forward pass).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from rich.progress import Progress

from ..arguments import path_or_name, whole_number
from ..config import METHODS, Method, ScoreConfig, config_key
from ..data.conversations import Format, unscorable_reason
from ..data.dataset import Dataset, as_dataset, record_notes
from ..data.identity import identities
from ..data.memory import is_in_memory
from ..errors import GradfilterError
from ..outputs import device_description, write_run_record, written_together
from ..paths import refuse_collisions, score_paths
from ..progress import advance_bar, library_bars, phase, progress_bars, shows_library_bars
from ..table import (
    DATA_FINGERPRINT,
    baseline_table,
    gsnr_table,
    record_columns,
    table_meta,
    with_identities,
    with_more_meta,
    write_table,
)
from . import distributed
from .baselines import NEEDS_MODEL, ProxyForward, baseline_columns
from .budget import batch_tokens
from .checkpoint import Checkpoint, NullCheckpoint, signals_held
from .collection import train_and_collect
from .ensemble import LoRAEnsemble
from .proxy import default_targets, load_model, load_tokenizer, resolve_device, resolve_dtype
from .tokenization import Encoded, encode, resolve_template

TARGETED = ("gsnr", "ifd")  # the methods --target-examples applies to


@dataclass(frozen=True)
class Tokenized:
    """A dataset's token ids and masks, and per record why it cannot be scored (None if it
    can)."""

    template: str
    encoded: list[Encoded]
    reasons: list[str | None]

    @property
    def scorable(self) -> np.ndarray:
        return np.array([i for i, r in enumerate(self.reasons) if r is None], dtype=np.int64)

    def sha256(self) -> str:
        """A hash of the token ids, loss masks and which records are scorable."""
        digest = hashlib.sha256()
        for item, reason in zip(self.encoded, self.reasons, strict=True):
            digest.update(np.int64(len(item.input_ids)).tobytes())
            digest.update(item.input_ids.astype(np.int64).tobytes())
            digest.update(item.response_mask.astype(np.uint8).tobytes())
            digest.update(b"+" if reason is None else b"-")
        return digest.hexdigest()

    def only(self, indices: np.ndarray) -> Tokenized:
        """The same records with only `indices` of them scorable (a rank's share)."""
        keep = set(indices.tolist())
        return Tokenized(self.template, self.encoded,
                         [r if r is not None or i in keep else "another process's share"
                          for i, r in enumerate(self.reasons)])

    def record_columns(self) -> dict[str, pa.Array]:
        return record_columns(len(self.encoded),
                              np.array([e.n_response_tokens for e in self.encoded]),
                              np.array([e.truncated for e in self.encoded]), self.reasons,
                              np.array([len(e.input_ids) for e in self.encoded]))

    def truncation(self, config: ScoreConfig) -> dict:
        """How much of the data --max-length hides: records longer than it (and how many of
        them are unscored: dropped, or left with no response token) and response tokens never
        seen (those past it, and all of an unscored record's)."""
        cut = [(e, r) for e, r in zip(self.encoded, self.reasons, strict=True) if e.truncated]
        unseen = sum(e.response_tokens_cut + (e.n_response_tokens if r is not None else 0)
                     for e, r in cut)
        return {"mode": config.truncation, "max_length": config.max_length,
                "records": len(self.encoded), "truncated_records": len(cut),
                "truncated_unscored": sum(r is not None for _, r in cut),
                "response_tokens": sum(e.n_response_tokens + e.response_tokens_cut
                                       for e in self.encoded),
                "response_tokens_unseen": unseen}


TRUNCATED_DROPPED = "longer than max_length ({max_length} tokens; --truncation drop)"


def tokenize(dataset: Dataset, tokenizer, config: ScoreConfig, skip_bad_records: bool,
             bars: Progress | None = None) -> Tokenized:
    """Every record's tokens under the config's template, length and turns (a progress task
    on `bars`, if given)."""
    template = resolve_template(tokenizer, config.template)
    encoded, reasons = [], []
    task = None if bars is None else bars.add_task("tokenize", total=len(dataset.records),
                                                   rate="", unit="records")
    start = time.perf_counter()
    for record in dataset.records:
        item, reason = _tokenize_record(dataset, record, tokenizer, template, config,
                                        skip_bad_records)
        encoded.append(item)
        reasons.append(reason)
        if task is not None:
            advance_bar(bars, task, 1, start)
    return Tokenized(template, encoded, reasons)


def _tokenize_record(dataset: Dataset, record, tokenizer, template: Literal["plain", "chat"],
                     config: ScoreConfig, skip_bad_records: bool) -> tuple[Encoded, str | None]:
    """One record's tokens, and why it cannot be scored (None if it can)."""
    try:
        turns = dataset.turns(record)
    except GradfilterError as exc:
        if not skip_bad_records:
            raise
        empty = Encoded(np.zeros(0, np.int64), np.zeros(0, bool), truncated=False)
        return empty, f"invalid record: {exc}"
    item = encode(turns, tokenizer, template, config.max_length, config.turns)
    reason = unscorable_reason(turns)
    if reason is None and item.truncated and config.truncation == "drop":
        reason = TRUNCATED_DROPPED.format(max_length=config.max_length)
    if reason is None and item.n_response_tokens == 0:
        reason = "no response tokens within max_length"
    return item, reason


def run_fingerprint(config: ScoreConfig, device: torch.device, dtype: torch.dtype,
                    tokens: Tokenized) -> dict:
    """Every setting that affects the statistics, and a hash of the tokenised data.

    A checkpoint directory keeps this; resuming with any of it different is refused. Settings
    that change no number (progress bars, checkpoint frequency, number of processes) are not in
    it, nor `batch_tokens`: micro-batches change numbers by float rounding only (an example's
    loss and gradient are its own; accumulation sums in another order), and a run resumed on
    another machine may need another budget to fit. `lora_targets` None means the proxy's
    default targets, fixed by `proxy`.
    """
    settings = config_key(config)
    del settings["batch_tokens"]
    settings.update(device=device.type, dtype=str(dtype).removeprefix("torch."),
                    template=tokens.template)
    if config.lora_targets is not None:
        settings["lora_targets"] = list(config.lora_targets)
    return {**settings, "records": len(tokens.encoded), "data_sha256": tokens.sha256()}


def score(
    data: str | Path | Dataset | Any,
    out: str | Path | None = None,
    config: ScoreConfig | None = None,
    *,
    method: Method = "gsnr",
    fmt: Format | None = None,
    limit: int | None = None,
    save_adapters: str | Path | None = None,
    skip_bad_records: bool = False,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    member_groups: int | None = None,
    target_examples: str | Path | Dataset | None = None,
) -> pa.Table:
    """Score `data` with `method` and write the statistics table (Parquet) to `out` (with
    `out=None`, write nothing: the table is returned). `data` is a path, a hub id, a read
    Dataset, or records in memory: a list of dicts, a `datasets.Dataset`, a pandas DataFrame.

    `gsnr` trains the LoRA ensemble (all G-SNR utilities); the baselines of method.md §6 need
    at most a forward pass of the proxy. With `checkpoint_dir` a gsnr run commits its state
    there every `checkpoint_every` optimiser steps (and collection batches) and at each epoch's
    end, and a rerun with the same settings continues from the last commit; a finished
    directory just rebuilds the table. Launched by torchrun, the ranks form `member_groups`
    member groups (default min(members, processes)) x data shards (see `distributed`); every
    rank returns the table, rank 0 writes it. With `target_examples` (gsnr or ifd; any
    format gradfilter reads, the pool's template and masks), the table also holds every
    record's alignment with them: by gradients for gsnr (method.md §4, `align*`), by RDS+'s
    pooled hidden states for ifd (§6, `rds`, `rds-mean`); without, nothing changes.
    """
    config = ScoreConfig() if config is None else config
    if not isinstance(data, Dataset) and not is_in_memory(data):  # (records: memory.py)
        path_or_name(data, "DATA")
    _check_arguments(config, method, checkpoint_dir, checkpoint_every, member_groups,
                     target_examples)
    refuse_collisions(*score_paths(data, out, config.proxy, checkpoint_dir=checkpoint_dir,
                                   save_adapters=save_adapters, target_examples=target_examples))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    dataset = as_dataset(data, fmt, limit, skip_bad_records)
    target = (None if target_examples is None
              else as_dataset(target_examples, None, None, skip_bad_records))
    with (distributed.session(resolve_device(config.device)) as (comm, device),
          library_bars(shows_library_bars(progress))):
        dtype = resolve_dtype(config.dtype, device, "gradients" if method == "gsnr" else "forward")
        shown = progress and comm.rank == 0
        tokenizer, tokens = _load_tokens(dataset, config, skip_bad_records, shown)
        target_tokens = (None if target is None
                         else tokenize(target, tokenizer, config, skip_bad_records))
        timings["read_and_tokenize"] = time.perf_counter() - start
        layout = comm.layout(config.members, member_groups)
        checkpoint = (NullCheckpoint() if checkpoint_dir is None else Checkpoint(
            checkpoint_dir, run_fingerprint(config, device, dtype, tokens), comm, layout,
            checkpoint_every))
        # the checkpoint is opened first: other settings are refused before the proxy loads
        with checkpoint, signals_held(checkpoint):
            start = time.perf_counter()
            torch.manual_seed(config.seed)
            model = (_load_proxy(config, device, shown)
                     if method == "gsnr" or method in NEEDS_MODEL else None)
            if model is not None:
                timings["load_proxy"] = time.perf_counter() - start
            # before any LoRA is installed: the proxy's own size, for the cost's break-even
            parameters = None if model is None else sum(p.numel() for p in model.parameters())
            if method == "gsnr":
                assert model is not None
                config = config.with_targets(default_targets(model))
                details = {"world_size": comm.world,
                           "checkpoint": None if checkpoint_dir is None else
                           {"dir": str(checkpoint_dir),
                            "resumed_from_step": checkpoint.manifest.step},
                           "save_adapters": str(save_adapters) if save_adapters else None}
                if target is not None:
                    assert target_tokens is not None
                    details["target"] = target_record(target, target_tokens)
                table = _score_gsnr(tokens, model, tokenizer, config, device, dtype, comm,
                                    layout, checkpoint, save_adapters, progress, timings,
                                    details, target_tokens)
            else:
                details = {}
                if target is not None:
                    assert target_tokens is not None
                    details["target"] = target_record(target, target_tokens)
                table = _score_baseline(method, tokens, model, tokenizer, config, device, dtype,
                                        progress and comm.rank == 0, timings, details,
                                        target_tokens)
        if parameters is not None:
            details["proxy_parameters"] = int(parameters)
        table = with_more_meta(with_identities(table, identities(dataset.records)),
                               truncation=tokens.truncation(config))
        if device.type == "cuda":
            details["device_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        if comm.rank == 0 and out is not None:
            _write_score_outputs(Path(out), table, dataset, tokens, method, config, device,
                                 dtype, timings, details)
        comm.barrier()
    return table


def _load_tokens(dataset: Dataset, config: ScoreConfig, skip_bad_records: bool,
                 shown: bool) -> tuple[object, Tokenized]:
    """The proxy's tokenizer and the tokenised data, each a progress phase."""
    with progress_bars(shown) as bars:
        with phase(bars, f"load tokenizer {config.proxy}"):
            tokenizer = load_tokenizer(config.proxy)
        return tokenizer, tokenize(dataset, tokenizer, config, skip_bad_records, bars)


def _load_proxy(config: ScoreConfig, device: torch.device, shown: bool) -> torch.nn.Module:
    with progress_bars(shown) as bars, phase(bars, f"load proxy {config.proxy}"):
        return load_model(config.proxy, device)


def target_record(target: Dataset, tokens: Tokenized) -> dict:
    """The target examples as the run record and the table's metadata name them: where they
    came from, how many were read and used, the tokens of those used (what their passes cost),
    and the hash of their tokens."""
    return {"data": str(target.path), "format": target.format, "records": len(target.records),
            "used": len(tokens.scorable),
            "tokens": int(sum(len(tokens.encoded[i].input_ids) for i in tokens.scorable)),
            "unused": {str(i): r for i, r in enumerate(tokens.reasons) if r is not None},
            "data_sha256": tokens.sha256()}


def _check_arguments(config: ScoreConfig, method: str, checkpoint_dir, checkpoint_every,
                     member_groups: int | None, target_examples=None) -> None:
    if not isinstance(config, ScoreConfig):
        raise GradfilterError(f"config must be a ScoreConfig, got {type(config).__name__}")
    config.validate()
    whole_number(checkpoint_every, "--checkpoint-every")
    if method not in METHODS:
        raise GradfilterError(f"--method must be one of {list(METHODS)}, got {method!r}")
    if target_examples is not None and method not in TARGETED:
        raise GradfilterError("--target-examples is for --method gsnr (alignment of the "
                              "ensemble's gradient sketches) or ifd (RDS+: cosines of the "
                              f"proxy's pooled hidden states), not {method}")
    if target_examples is not None and method == "gsnr" and not config.sketch_dim:
        raise GradfilterError("--target-examples needs gradient sketches (--sketch-dim above 0)")
    if checkpoint_every < 1:
        raise GradfilterError("--checkpoint-every must be at least 1")
    if checkpoint_dir is not None and method != "gsnr":
        raise GradfilterError("--checkpoint-dir is for --method gsnr (baselines are one pass)")
    if member_groups is not None and method != "gsnr":
        raise GradfilterError("--member-groups is for --method gsnr (baselines have no members)")


def _score_gsnr(tokens: Tokenized, model: torch.nn.Module, tokenizer, config: ScoreConfig,
                device: torch.device, dtype: torch.dtype, comm: distributed.Comm,
                layout: distributed.Layout, checkpoint: Checkpoint | NullCheckpoint,
                save_adapters: str | Path | None, progress: bool, timings: dict[str, float],
                details: dict, target: Tokenized | None = None) -> pa.Table:
    """The untrained proxy's IFD ratios (with `ifd_pass`), then install this rank's members,
    train and collect (resumably): the table with every G-SNR utility (and, with `target`,
    the alignments with its scorable examples)."""
    ifd_ratio = None
    if config.ifd_pass:  # before any LoRA is installed: the proxy as the IFD baseline sees it
        start = time.perf_counter()
        forward_dtype = resolve_dtype(config.dtype, device, "forward")
        # each rank its share of the records (all of them in a single process)
        share = tokens.only(layout.spread(tokens.scorable))
        ifd_ratio = comm.gather_filled(_score_baseline(
            "ifd", share, model, tokenizer, config, device, forward_dtype,
            progress and comm.rank == 0, {}, {}).column("ifd_ratio").to_numpy())
        timings["ifd_pass"] = time.perf_counter() - start
        details["ifd_pass_dtype"] = str(forward_dtype)
    ensemble = LoRAEnsemble(model, config.members, config.lora_rank, config.lora_alpha,
                            config.targets, config.seed, member_ids=layout.local_members)

    def export(epoch: int) -> None:
        assert save_adapters is not None
        for k, m in enumerate(ensemble.member_ids):
            if layout.owns(m):
                ensemble.save_member(k, Path(save_adapters) / f"epoch{epoch}" / f"member{m}",
                                     config.proxy)

    stats = train_and_collect(ensemble, tokens.encoded, tokens.scorable, config, device, dtype,
                              progress, export if save_adapters is not None else None,
                              checkpoint=checkpoint, comm=comm, layout=layout,
                              target=None if target is None else scorable_targets(target))
    timings.update(stats.phase_seconds)
    details["batch_tokens"] = stats.batch_tokens
    if details.get("checkpoint") is not None:  # every run that worked on the table, its budget
        details["checkpoint"]["runs"] = checkpoint.runs
    details["layout"] = stats.layout
    details["train_loss_first_last"] = stats.train_losses[:1] + stats.train_losses[-1:]
    sketch_meta = (ensemble.sketch_projection(config.sketch_dim, config.seed).metadata()
                   if config.sketch_dim else None)
    if target is not None:
        details["target"]["loss_by_epoch"] = {  # mean over examples, per member
            str(e): losses.mean(axis=0).tolist() for e, losses in stats.target_losses.items()}
    return gsnr_table(tokens.record_columns(), tokens.scorable, stats.losses, stats.sqnorms,
                      config, stats.sketches, sketch_meta,
                      ifd_ratio, stats.target_sketches or None,
                      None if target is None else details["target"])


def scorable_targets(tokens: Tokenized) -> list[Encoded]:
    """The examples with a response token, refused when there are none."""
    if not len(tokens.scorable):
        raise GradfilterError("--target-examples: no target example has a response token "
                              f"within max_length ({len(tokens.encoded)} read)")
    return [tokens.encoded[i] for i in tokens.scorable]


def _score_baseline(method: str, tokens: Tokenized, model: torch.nn.Module | None, tokenizer,
                    config: ScoreConfig, device: torch.device, dtype: torch.dtype,
                    progress: bool, timings: dict[str, float], details: dict,
                    target: Tokenized | None = None) -> pa.Table:
    """A baseline's table: the record columns plus the method's score columns (with `target`,
    ifd's, RDS+'s too: `details["target"]` names the target examples)."""
    with progress_bars(progress) as bars:
        forward = None
        if model is not None:
            budget = batch_tokens(config.batch_tokens, model, device, dtype, "forward")
            details["batch_tokens"] = budget
            forward = ProxyForward(model, tokenizer, config.collect_batch_size, device, dtype,
                                   bars, budget)
        start = time.perf_counter()
        columns = baseline_columns(method, tokens.encoded, tokens.scorable, len(tokens.encoded),
                                   config.seed, forward,
                                   None if target is None else scorable_targets(target))
        timings[method] = time.perf_counter() - start
        if forward is not None:
            details["forward_tokens"] = forward.tokens
        if target is not None:
            assert forward is not None and forward.target_representations is not None
            details["target"]["representations"] = representation_record(
                forward.target_representations)
    return baseline_table(tokens.record_columns(), columns, method, config,
                          None if target is None else details["target"])


def representation_record(representations: np.ndarray) -> dict:
    """How the target examples' RDS+ representations were made, and their fingerprint."""
    return {"pooling": "position-weighted mean of the last hidden states over the whole "
                       "sequence (RDS+; docs/method.md §6)",
            "examples": int(representations.shape[0]),
            "hidden_size": int(representations.shape[1]),
            "sha256": hashlib.sha256(np.ascontiguousarray(
                representations, dtype=np.float32).tobytes()).hexdigest(),
            "aggregation": "rds: round robin over the target examples; rds-mean: mean cosine"}


@written_together  # the table and its run record move into place together
def _write_score_outputs(out: Path, table: pa.Table, dataset: Dataset, tokens: Tokenized,
                         method: str, config: ScoreConfig, device: torch.device,
                         dtype: torch.dtype, timings: dict[str, float], details: dict) -> None:
    start = time.perf_counter()
    write_table(table, out)
    timings["write_table"] = time.perf_counter() - start
    write_run_record(out, {
        "stage": "score",
        "method": method,
        "data": str(dataset.path),
        "format": dataset.format,
        "template": tokens.template,
        "records": len(dataset.records),
        "scored": len(tokens.scorable),
        "unscored": {str(i): r for i, r in enumerate(tokens.reasons) if r is not None},
        "truncated": int(sum(e.truncated for e in tokens.encoded)),
        "truncation": tokens.truncation(config),
        # Records whose text spells a special token of the tokenizer (scored as plain text).
        "special_token_text": [i for i, e in enumerate(tokens.encoded) if e.spells_special],
        DATA_FINGERPRINT: table_meta(table).get(DATA_FINGERPRINT),
        **record_notes(dataset),
        "read_warnings": dataset.report.warnings,
        **({"shards": dataset.report.shards} if dataset.report.shards else {}),
        "config": asdict(config),
        "seeds": {"seed": config.seed, "member_seed_rule": "derived_seed(seed, m, ...)"},
        "device": device_description(str(device)),
        "dtype": str(dtype),
        **details,
        "wall_seconds": timings,
    })
