"""The commands that need no model: select (from a statistics table), report and inspect."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from ..data.conversations import FORMATS
from ..data.quality import records
from ..diversity import DIVERSITY
from ..utilities import RANKINGS
from .options import (
    OUT_HELP,
    allow_mismatch_option,
    data_options,
    out_format_option,
    report_options,
    report_outputs,
    report_target,
    select_options,
    split_option,
)
from .report import print_selection


@click.command()
@click.argument("data")
@click.option("--stats", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(), required=True,
              help=f"Subset file (a directory for --out-format hf). {OUT_HELP}")
@data_options
@out_format_option
@select_options
@allow_mismatch_option
@report_options
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of --stratify clusters and --within random.")
def select(data: str, stats: Path, out: str, fmt, fields, limit, split, report: Path | None,
           no_report: bool, **options) -> None:
    """Write the top records of DATA by a utility from a statistics table (no model needed),
    and the selection's report page (report.html beside the subset).

    DATA is streamed, never held: memory holds the table's scores and the chosen indices. The
    table must have been scored on DATA as it is (same records, same order): its data
    fingerprint and record hashes are checked on the way.
    """
    from ..data.conversations import parse_fields
    from ..paths import refuse_collisions, select_paths
    from ..report.selection import SelectionSources
    from ..report.selection_page import write_selection_report
    from ..subset import select as select_subset

    page = report_target(Path(out), report, no_report)
    inputs, outputs = select_paths(data, stats, out, options["out_format"],
                                   rejected=options["rejected"], annotate=options["annotate"])
    refuse_collisions(inputs, [*outputs, *report_outputs(
        page, "--report" if report else "default --report")])
    subset = select_subset(data, stats, Path(out), fmt=fmt, fields=parse_fields(fields),
                           limit=limit, split=split, **options)
    if page is not None:
        write_selection_report(SelectionSources(
            stats, data, subset=Path(out), fmt=fmt, fields=parse_fields(fields), split=split,
            limit=limit, allow_data_mismatch=options["allow_data_mismatch"]), page)
    print_selection(subset, Path(out), stats, report=page)


@click.command()
@click.argument("table", type=click.Path(path_type=Path))
@click.option("--data", default=None,
              help="The data the table was scored from (default: the file its run record, or "
                   "the subset's, names, if it is still there).")
@click.option("--out", type=click.Path(), default=None,
              help="The page (replaces only an earlier report; default: report.html, in the "
                   "benchmark's directory for a benchmark).")
@click.option("--subset", type=click.Path(path_type=Path), default=None,
              help="A subset written by select or run: its run record says how it was chosen "
                   "(utility, budget, diversity) and from which data.")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="Labels of records corrupted on purpose (a Parquet file with a 'corruption' "
                   "column, one row a record: the demo's labels.parquet, bench noise's).")
@click.option("--examples", type=click.IntRange(0, 50), default=10, show_default=True,
              help="Records shown at the top, around the cut and at the bottom.")
@click.option("--utility", type=click.Choice(RANKINGS), default=None,
              help="What to rank by (default: the subset's, else the table's default).")
@click.option("--ratio", type=float, default=None,
              help="Fraction kept (default: the subset's, else 0.1).")
@click.option("--count", type=int, default=None, help="Number kept.")
@click.option("--diversity", type=click.Choice(DIVERSITY), default=None,
              help="dedup: near-duplicates removed as select does (default: the subset's).")
@click.option("--diversity-threshold", type=float, default=None,
              help="Cosine at or above which dedup removes a record (default: the subset's).")
@allow_mismatch_option
@data_options
def report(table: Path, data: str | None, out: str | Path | None, subset: Path | None,
           labels: Path | None, examples: int, allow_data_mismatch: bool, fmt, fields, limit,
           split, **choice) -> None:
    """Write the report page (one self-contained HTML file) of a selection from TABLE, or of a
    benchmark from its results.json (or its output directory).

    The page shows the run record, the scores with the cut, kept against dropped (lengths,
    turns, fields, unscorable records), the other scores the table carries, agreement with the
    cheap baselines, what dedup changed, what scoring cost against fine-tuning on the whole
    pool and on the subset (row-tokens, the break-even), and the best, worst and borderline
    records.
    """
    from ..data.conversations import parse_fields
    from ..outputs import run_record_path
    from ..paths import reads, refuse_collisions
    from ..report import REPORT_NAME
    from ..report.benchmarks import results_file, write_benchmark_report
    from ..report.selection import SelectionSources
    from ..report.selection_page import write_selection_report

    results = results_file(table)
    if results is not None:  # a benchmark: its results and run record are what it reads
        out = out or results.parent / REPORT_NAME
        refuse_collisions([*reads("the results", "TABLE", results),
                           *reads("their run record", "TABLE", run_record_path(results))],
                          report_outputs(out, "--out"))
        out = Path(out)
        Console(soft_wrap=True).print(
            f"report: {write_benchmark_report(results, out)}", markup=False)
        return
    out = out or Path(REPORT_NAME)
    inputs = [*reads("the table", "TABLE", table), *reads("the data", "--data", data),
              *reads("the labels", "--labels", labels),
              *reads("the subset's run record", "--subset",
                     run_record_path(subset) if subset else None)]
    refuse_collisions(inputs, report_outputs(out, "--out"))
    out = Path(out)
    written = write_selection_report(SelectionSources(
        table, data, subset, labels, fmt, parse_fields(fields), split, limit,
        examples=examples, allow_data_mismatch=allow_data_mismatch, **choice), out)
    Console(soft_wrap=True).print(f"report: {written}", markup=False)


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
    if found.copies is not None and found.copies.records:
        out.print(f"exact copies: {found.copies.line()}", markup=False)
    if found.duplicate_keys or found.empty_replies:
        out.print(f"{records(found.duplicate_keys)} with a duplicate key, "
                  f"{found.empty_replies} with an empty reply (listed below)", markup=False)
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
