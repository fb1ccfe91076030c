"""Probe: does the gradient drop measured on records a member never trained on rank better?

On a small pool, many optimiser steps make each member memorise the records it trains on,
and a record's drop between epochs s and t then mostly says how much its own visit taught
the member: corrupted records, with the most to memorise, drop most (results.md). In the
paper's regime (52k records, two epochs) a record's drop comes mostly from what the other
records taught. This probe measures that part alone, by cross-fitting: the scorable records
are split in two seeded halves; an ensemble is trained on each half (`gradfilter score`, the
same settings, adapters saved after epochs s and t); then every record's loss and squared
LoRA-gradient norm are measured under the adapters of the ensemble trained on the other
half, one backward per record and member (the brute-force reference of the engine's
numbers). The result is a statistics table of the whole pool, every utility computed from
these held-out columns, to be set against the ordinary table with `table_agreement.py
--labels`.

A probe for the study, not an engine mode: it costs the two half-runs plus M x 2 backward
passes per record, one record at a time.

    python benchmarks/studies/heldout_probe.py runs/si126 \
        --base runs/si126/tables/gsnr-b1-seed0.parquet --work runs/si126/heldout-b1 \
        --out runs/si126/tables/heldout-b1.parquet
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from peft import PeftModel

import gradfilter as gf
from gradfilter.config import ScoreConfig
from gradfilter.data.dataset import as_dataset
from gradfilter.errors import GradfilterError
from gradfilter.outputs import atomic_write_text, write_run_record
from gradfilter.paths import reads, refuse_collisions, writes
from gradfilter.scoring.proxy import load_model, load_tokenizer
from gradfilter.scoring.score import tokenize
from gradfilter.scoring.tokenization import Encoded
from gradfilter.table import load_stats, table_meta, with_utilities, write_table


def halves(scorable: np.ndarray, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(scorable)
    return [np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])]


def record_split(work: Path, data: Path, seed: int, parts: list[np.ndarray]) -> None:
    """Write `work`/split.json, or check the one there: half-runs already in `work` (a finished
    table is reused, a checkpoint resumed) must have been trained on these very halves."""
    split = {"data": str(data.resolve()), "split_seed": seed,
             "halves": [rows.tolist() for rows in parts]}
    path = work / "split.json"
    if path.exists():
        if json.loads(path.read_text(encoding="utf-8")) != split:
            raise GradfilterError(f"{path}: the half-runs in --work {work} were made from "
                                  "other data or another --split-seed; choose another --work")
        return
    atomic_write_text(path, json.dumps(split) + "\n")


def write_subset(source: Path, rows: np.ndarray, records: int, out: Path) -> None:
    """The records at `rows` (positions in the JSONL `source` of `records` records), as they
    were."""
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) != records:
        raise GradfilterError(f"{source}: {len(lines)} lines for {records} records; the "
                              "probe needs one JSON record per line")
    out.write_text("".join(lines[i] + "\n" for i in rows), encoding="utf-8")


def record_stats(model: PeftModel, item: Encoded,
                 params: list[torch.nn.Parameter]) -> tuple[float, float]:
    """One record's mean response cross-entropy and squared LoRA-gradient norm."""
    ids = torch.from_numpy(item.input_ids.astype(np.int64))[None]
    labels = torch.where(torch.from_numpy(item.response_mask)[None], ids, -100)
    loss = model(input_ids=ids, labels=labels).loss
    grads = torch.autograd.grad(loss, params)
    return float(loss.detach()), float(sum(g.double().pow(2).sum() for g in grads))


def measure(backbone: torch.nn.Module, encoded: list[Encoded], jobs: list[tuple[np.ndarray, Path]],
            epochs: tuple[int, int], members: int) -> dict[tuple[str, int], np.ndarray]:
    """Per (stat, epoch), [records, members]: the loss and squared gradient norm of the records
    `rows` under the adapters saved in `adapters` (epoch{e}/member{m}), for each (rows,
    adapters) job; NaN elsewhere. The LoRA layers stay in `backbone`."""
    stats = {(kind, e): np.full((len(encoded), members), np.nan)
             for kind in ("loss", "sqnorm") for e in epochs}
    model, previous = None, None
    for rows, adapters in jobs:
        for e in epochs:
            for m in range(members):
                name = f"{adapters.name}_e{e}_m{m}"
                path = adapters / f"epoch{e}" / f"member{m}"
                if model is None:
                    model = PeftModel.from_pretrained(backbone, path, adapter_name=name,
                                                      is_trainable=True)
                else:
                    model.load_adapter(path, adapter_name=name, is_trainable=True)
                model.set_adapter(name)
                if previous is not None:
                    model.delete_adapter(previous)
                model.eval()
                params = [p for n, p in model.named_parameters() if f".{name}." in n]
                for i in rows:
                    stats["loss", e][i, m], stats["sqnorm", e][i, m] = record_stats(
                        model, encoded[i], params)
                previous = name
                print(f"{len(rows)} records under {path}", flush=True)
    return stats


def heldout_table(base: pa.Table, stats: dict[tuple[str, int], np.ndarray]) -> pa.Table:
    """`base` with its loss and squared-norm columns replaced by `stats` and every utility
    computed again (its gradient sketches dropped: they are not measured here)."""
    table = base.drop_columns([c for c in base.column_names if c.startswith("sketch")])
    for (kind, e), values in stats.items():
        for m in range(values.shape[1]):
            column = f"{kind}_e{e}_m{m}"
            table = table.set_column(table.column_names.index(column), column,
                                     pa.array(values[:, m]))
    return with_utilities(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a bench noise run (mixed-s0.jsonl)")
    parser.add_argument("--base", type=Path, required=True,
                        help="the pool's ordinary G-SNR table: its settings are reused")
    parser.add_argument("--work", type=Path, required=True, help="for the half-runs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args()
    try:
        probe(args.run_dir / "mixed-s0.jsonl", args.base, args.work, args.out, args.split_seed)
    except GradfilterError as exc:  # a missing input, a collision: one line, no traceback
        raise SystemExit(f"error: {exc}") from None


def probe(data: Path, base_path: Path, work: Path, out: Path, split_seed: int) -> None:
    refuse_collisions(reads("data", "RUN_DIR", data) + reads("base table", "--base", base_path),
                      writes("held-out table", "--out", out)
                      + writes("work directory", "--work", work, "dir", run_record=False))
    base = load_stats(base_path)
    meta = table_meta(base)
    if meta.get("method") != "gsnr":
        raise GradfilterError(f"{base_path}: not a G-SNR statistics table")
    settings = meta["config"]
    config = ScoreConfig(**{**settings, "lora_targets": tuple(settings["lora_targets"])})
    tokens = tokenize(as_dataset(data), load_tokenizer(config.proxy), config,
                      skip_bad_records=False)
    parts = halves(tokens.scorable, split_seed)
    work.mkdir(parents=True, exist_ok=True)
    record_split(work, data, split_seed, parts)
    seconds: dict[str, float] = {}
    for h, rows in enumerate(parts):
        start = time.perf_counter()
        subset = work / f"half{h}.jsonl"
        write_subset(data, rows, len(tokens.encoded), subset)
        if not (work / f"half{h}.parquet").exists():
            gf.score(subset, work / f"half{h}.parquet", replace(config, ifd_pass=False),
                     save_adapters=work / f"adapters{h}",
                     checkpoint_dir=work / f"ckpt{h}")
        seconds[f"half{h}"] = time.perf_counter() - start
    start = time.perf_counter()
    jobs = [(parts[0], work / "adapters1"), (parts[1], work / "adapters0")]
    stats = measure(load_model(config.proxy, torch.device("cpu")), tokens.encoded, jobs,
                    (config.early, config.late), config.members)
    seconds["measure"] = time.perf_counter() - start
    write_table(heldout_table(base, stats), out)
    write_run_record(out, {
        "stage": "heldout probe", "data": str(data), "base": str(base_path), "work": str(work),
        "split_seed": split_seed, "halves": [len(rows) for rows in parts],
        "config": asdict(config), "wall_seconds": seconds})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
