"""The commands that need no model: select (from a statistics table) and inspect."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from ..data.conversations import FORMATS
from .options import (
    allow_mismatch_option,
    data_options,
    out_format_option,
    select_options,
    split_option,
)
from .report import print_selection


@click.command()
@click.argument("data")
@click.option("--stats", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Subset file (a directory for --out-format hf).")
@data_options
@out_format_option
@select_options
@allow_mismatch_option
def select(data: str, stats: Path, out: Path, fmt, fields, limit, split, **options) -> None:
    """Write the top records of DATA by a utility from a statistics table (no model needed).

    DATA is streamed, never held: memory holds the table's scores and the chosen indices. The
    table must have been scored on DATA as it is (same records, same order): its data
    fingerprint and record hashes are checked on the way.
    """
    from ..data.conversations import parse_fields
    from ..paths import refuse_collisions, select_paths
    from ..subset import select as select_subset

    refuse_collisions(*select_paths(data, stats, out, options["out_format"]))
    subset = select_subset(data, stats, out, fmt=fmt, fields=parse_fields(fields), limit=limit,
                           split=split, **options)
    print_selection(subset, out, stats)


@click.command()
@click.argument("data")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None)
@click.option("--fields", default=None, help="Map key names onto the format.")
@split_option
@click.option("--max-problems", type=int, default=50, show_default=True,
              help="How many problems to print (all are counted).")
@click.option("--strict", is_flag=True,
              help="Exit 1 if any problem was found (0 if none), to gate a pipeline: "
                   "`gradfilter inspect d.jsonl --strict && gradfilter run d.jsonl ...`.")
def inspect(data: str, fmt, fields, split, max_problems: int, strict: bool) -> None:
    """Read DATA without a model: format, counts, turn and length statistics, every problem.

    DATA is streamed: memory holds counters and lengths, never the records.
    """
    from ..data.conversations import parse_fields
    from ..data.inspect import inspect_dataset
    from .report import role_variants_note

    found = inspect_dataset(data, fmt, parse_fields(fields), split)
    out = Console(soft_wrap=True)
    out.print(f"{found.path}: {found.records} record{'' if found.records == 1 else 's'}, "
              f"format {found.format}, container {found.container}", markup=False)
    out.print(f"roles: {dict(found.roles)}", markup=False)
    out.print(f"turns per record (percentiles): {found.percentiles(found.turns_per_record)}")
    out.print(f"response length in characters (percentiles): "
              f"{found.percentiles(found.response_chars)}")
    for warning in found.warnings:
        out.print(f"warning: {warning}", markup=False)
    if found.role_variants:
        out.print(f"note: {role_variants_note(found.role_variants, found.first_role_variant)}",
                  markup=False)
    if found.first_special_token is not None:
        index, text = found.first_special_token
        count = found.special_token_text
        out.print(f"note: {count} {'record' if count == 1 else 'records'} hold text that looks "
                  f"like a model's special token (the first: record {index}, {text!r}); scoring "
                  "tokenises it as plain text, never as the token", markup=False)
    n = len(found.problems)
    out.print(f"{n} {'problem' if n == 1 else 'problems'}")
    for problem in found.problems[:max_problems]:
        out.print(f"  {problem}", markup=False)
    if n > max_problems:
        out.print(f"  ... and {n - max_problems} more (--max-problems)")
    if strict and n:
        sys.exit(1)
