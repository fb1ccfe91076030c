"""Two G-SNR tables of the same records, scored with different `--seed` and the same everything
else, joined into one table of 2M members: what a run with `--members 2M` measures (members
are independent: each has its own initialisation and data order), for the price of a second
run that may already be on disk. Every utility is recomputed over all the members; gradient
sketches are left out.

    python benchmarks/studies/join_members.py runs/sg300/tables/gsnr.parquet \
        runs/sg300/tables/gsnr-seed1.parquet --out runs/sg300/tables/gsnr-m8.parquet
    python benchmarks/studies/table_agreement.py runs/sg300/tables/gsnr.parquet \
        runs/sg300/tables/gsnr-m8.parquet --labels runs/sg300/labels-s0.parquet
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa

from gradfilter.config import ScoreConfig
from gradfilter.errors import GradfilterError
from gradfilter.table import (
    IFD_RATIO,
    gsnr_table,
    load_stats,
    raw_stats,
    raw_stats_columns,
    table_epochs,
    table_meta,
    write_table,
)
from gradfilter.utilities import RawStats

# Settings two runs may differ in: the seed (the point), and those that change no number
# beyond float rounding.
MAY_DIFFER = {"seed", "device", "batch_tokens"}
HEAD = ("index", "n_response_tokens", "truncated", "skip_reason")


def join_members(first: pa.Table, second: pa.Table) -> pa.Table:
    """`first`'s members then `second`'s, as one G-SNR table (the config and IFD ratios are
    `first`'s, with the members counted anew)."""
    config = _joinable_config(first, second)
    early, late = table_epochs(first)
    scorable = np.flatnonzero(first["skip_reason"].is_null().to_numpy(zero_copy_only=False))
    stats = [_raw_stats(t, early, late) for t in (first, second)]

    def joined(field: str) -> np.ndarray:
        return np.concatenate([getattr(s, field)[scorable] for s in stats], axis=1)

    losses = {early: joined("loss_early"), late: joined("loss_late")}
    sqnorms = {early: joined("sqnorm_early"), late: joined("sqnorm_late")}
    ifd = (first[IFD_RATIO].to_numpy(zero_copy_only=False)
           if IFD_RATIO in first.column_names else None)
    members = sqnorms[late].shape[1]
    return gsnr_table({name: first[name].combine_chunks() for name in HEAD}, scorable, losses,
                      sqnorms, ScoreConfig(**{**config, "members": members}), ifd_ratio=ifd)


def _joinable_config(first: pa.Table, second: pa.Table) -> dict:
    if first.num_rows != second.num_rows or any(
            first[name].to_pylist() != second[name].to_pylist() for name in HEAD):
        raise GradfilterError("the two tables are not of the same records (their index, "
                              "lengths or skipped records differ)")
    configs = [table_meta(t).get("config") for t in (first, second)]
    if table_meta(first).get("method") != "gsnr" or None in configs:
        raise GradfilterError("both tables must be G-SNR tables written by `gradfilter score`")
    differ = sorted(k for k in configs[0].keys() | configs[1].keys()
                    if k not in MAY_DIFFER and configs[0].get(k) != configs[1].get(k))
    if differ:
        raise GradfilterError(f"the two runs differ in {', '.join(differ)}: only --seed may")
    if configs[0]["seed"] == configs[1]["seed"]:
        raise GradfilterError("the two runs have the same seed: their members are the same")
    known = {f.name for f in fields(ScoreConfig)}
    config = {k: v for k, v in configs[0].items() if k in known}
    if config.get("lora_targets") is not None:
        config["lora_targets"] = tuple(config["lora_targets"])
    return config


def _raw_stats(table: pa.Table, early: int, late: int) -> RawStats:
    """[records, members] squared norms and losses at both collected epochs."""
    columns = raw_stats_columns(table.column_names, early, late, with_loss=True)
    return raw_stats(columns, lambda c: table[c].to_numpy(zero_copy_only=False).astype(np.float64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    try:
        if args.out.exists():
            raise GradfilterError(f"{args.out} exists; choose another --out")
        joined = join_members(load_stats(args.first), load_stats(args.second))
    except GradfilterError as exc:  # one line, no traceback
        raise SystemExit(f"error: {exc}") from None
    write_table(joined, args.out)
    print(f"{args.out}: {table_meta(joined)['members']} members, {joined.num_rows} records")


if __name__ == "__main__":
    main()
