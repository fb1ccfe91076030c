"""The `gradfilter` command line: score, select, run (both), inspect and demo."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click
from rich.console import Console

from .errors import GradfilterError
from .formats import CONTAINERS, FORMATS
from .utilities import BASELINE_SCORES, UTILITIES

console = Console(stderr=True)
# Commands that load a model live in cli_model (it imports torch), loaded only when they run.
MODEL_COMMANDS = {"score": "cli_model", "run": "cli_model", "demo": "cli_model",
                  "bench": "cli_bench"}


class _Commands(click.Group):
    """The command group; `MODEL_COMMANDS` come from their module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *MODEL_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in MODEL_COMMANDS:
            module = importlib.import_module(f".{MODEL_COMMANDS[name]}", __package__)
            return getattr(module, name)
        return super().get_command(ctx, name)


def select_options(command):
    options = [
        click.option("--ratio", type=float, default=None, help="Fraction of records to keep."),
        click.option("--count", type=int, default=None, help="Number of records to keep."),
        click.option("--utility", type=click.Choice((*UTILITIES, *BASELINE_SCORES)),
                     default=None,
                     help="What to rank by (default: gsnr, or the baseline that made the table)."),
        click.option("--order", type=click.Choice(["input", "score"]), default="input",
                     show_default=True),
        click.option("--score-field", default=None, help="Add the score to each kept record."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def data_options(command):
    """How DATA is read: format override, key-name mapping, split, first N records."""
    options = [
        click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                     help="Override the detected format."),
        click.option("--fields", default=None,
                     help="Map key names onto the format, e.g. instruction=question,"
                          "output=answer."),
        click.option("--limit", type=int, default=None, help="Use only the first N records."),
        split_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


split_option = click.option(
    "--split", default=None,
    help="Split of a Hugging Face DatasetDict or hub dataset (default: train).")
out_format_option = click.option(
    "--out-format", type=click.Choice(CONTAINERS), default=None,
    help="Container of the subset (default: the input's; hf is a save_to_disk directory).")
skip_option = click.option(
    "--skip-bad-records", is_flag=True,
    help="Keep records that cannot be read or fail validation (a malformed JSONL line, a "
         "missing field) as unscored rows in their place (listed in the run record) instead "
         "of stopping.")


def _read(data: str, fmt, fields, limit, split=None, skip_bad_records: bool = False):
    from .dataset import read_dataset
    from .formats import parse_fields

    return read_dataset(data, fmt, limit, parse_fields(fields), split=split,
                        skip_bad_records=skip_bad_records)


@click.group(cls=_Commands)
@click.version_option(package_name="gradfilter")
def app() -> None:
    """Select the high-value part of an instruction-tuning dataset by gradient signal-to-noise.

    DATA: a .json/.jsonl(.gz)/.parquet file, a directory written by a Hugging Face dataset's
    save_to_disk, or a hub dataset id (owner/name).
    """


@app.command()
@click.argument("data")
@click.option("--stats", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Subset file (a directory for --out-format hf).")
@data_options
@out_format_option
@select_options
def select(data: str, stats: Path, out: Path, fmt, fields, limit, split, **options) -> None:
    """Write the top records of DATA by a utility from a statistics table (no model needed).

    DATA is streamed, never held: memory holds the table's scores and the chosen indices.
    """
    from .formats import parse_fields
    from .subset import load_scores, select_subset, table_utility

    options["utility"] = options["utility"] or table_utility(stats)
    scores = load_scores(stats, options["utility"])
    subset = select_subset(data, stats, out, fmt=fmt, fields=parse_fields(fields), limit=limit,
                           split=split, remember=_preview_indices(scores), **options)
    _summary(subset, scores, options["utility"], out, stats)


@app.command()
@click.argument("data")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None)
@click.option("--fields", default=None, help="Map key names onto the format.")
@split_option
@click.option("--max-problems", type=int, default=50, show_default=True,
              help="How many problems to print (all are counted).")
def inspect(data: str, fmt, fields, split, max_problems: int) -> None:
    """Read DATA without a model: format, counts, turn and length statistics, every problem.

    DATA is streamed: memory holds counters and lengths, never the records.
    """
    from .formats import parse_fields
    from .inspection import inspect_dataset

    found = inspect_dataset(data, fmt, parse_fields(fields), split)
    out = Console(soft_wrap=True)
    out.print(f"{found.path}: {found.records} records, format {found.format}, "
              f"container {found.container}", markup=False)
    out.print(f"roles: {dict(found.roles)}", markup=False)
    out.print(f"turns per record (percentiles): {found.percentiles(found.turns_per_record)}")
    out.print(f"response length in characters (percentiles): "
              f"{found.percentiles(found.response_chars)}")
    for warning in found.warnings:
        out.print(f"warning: {warning}", markup=False)
    out.print(f"{len(found.problems)} problems")
    for problem in found.problems[:max_problems]:
        out.print(f"  {problem}", markup=False)
    if len(found.problems) > max_problems:
        out.print(f"  ... and {len(found.problems) - max_problems} more (--max-problems)")


def _recoveries(report, notes: dict) -> list[str]:
    """What the run recovered from, one line each; the run record lists every record."""
    lines = [f"warning: {warning}" for warning in report.warnings]
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} unreadable records (kept in place, "
                     f"unscored), the first: {report.skipped[0]}")
    if notes.get("duplicate_ids"):
        lines.append(f"{len(notes['duplicate_ids'])} records repeat an earlier record's id "
                     "(all kept)")
    if notes.get("ends_on_prompt"):
        lines.append(f"{len(notes['ends_on_prompt'])} conversations end on a prompt turn "
                     "(scored; the unanswered tail carries no loss)")
    return lines


def _preview_indices(scores) -> list[int]:
    """The 3 best and 3 worst records by their scores: the summary shows their prompts."""
    from .selection import select_top

    ranked = select_top(scores, ratio=1.0).indices
    return [int(i) for i in (*ranked[:3], *ranked[::-1][:3])]


def _preview(subset, record) -> str:
    turns = subset.turns(record)
    prompt = next((t.text for t in turns if t.role == "user"), "")
    text = " ".join(prompt.split())
    return text[:70] + ("..." if len(text) > 70 else "")


def _summary(subset, scores, utility: str, out: Path, stats: Path,
             notes: dict | None = None) -> None:
    """What was kept, where everything went, what was recovered, and the 3 best and worst
    records by `scores` (one per input record)."""
    from .outputs import run_record_path
    from .selection import select_top

    selection = subset.selection
    ranked = select_top(scores, ratio=1.0).indices
    out_console = Console(soft_wrap=True)
    out_console.print(
        f"kept {len(selection.indices)} of {selection.n_records} records by {utility} "
        f"(asked for {selection.requested}; {selection.n_nonfinite} without a finite score)"
    )
    out_console.print(f"subset:           {out}\nstatistics table: {stats}\n"
                      f"run record:       {run_record_path(out)}")
    for line in _recoveries(subset.report, notes or {}):
        out_console.print(line, markup=False)
    for title, picks in (("best", ranked[:3]), ("worst", ranked[::-1][:3])):
        out_console.print(f"{title} 3 by {utility}:")
        for i in picks:
            preview = _preview(subset, subset.records[int(i)])
            out_console.print(f"  #{i:<6} {scores[i]: .4g}  {preview}", markup=False)


def main() -> None:
    try:
        app(standalone_mode=False)
    except GradfilterError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
