"""The `gradfilter` command line: score, select, run (both) and demo."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

import click
from rich.console import Console

from .errors import GradfilterError
from .formats import CONTAINERS, FORMATS
from .gradstats import ScoreConfig
from .utilities import UTILITIES

console = Console(stderr=True)
DEFAULTS = ScoreConfig()


def score_options(command):
    """The options of `score` and `run`, defaults from ScoreConfig (method.md §2)."""
    options = [
        click.option("--proxy", default=DEFAULTS.proxy, show_default=True,
                     help="Hub id, local directory or .gguf file of a causal LM."),
        click.option("--members", type=int, default=DEFAULTS.members, show_default=True),
        click.option("--epochs", type=int, default=DEFAULTS.epochs, show_default=True),
        click.option("--early", type=int, default=DEFAULTS.early, show_default=True,
                     help="Epoch s of the early gradient snapshot."),
        click.option("--late", type=int, default=DEFAULTS.late, show_default=True,
                     help="Epoch t of the late gradient snapshot."),
        click.option("--lora-rank", type=int, default=DEFAULTS.lora_rank, show_default=True),
        click.option("--lora-alpha", type=float, default=DEFAULTS.lora_alpha, show_default=True),
        click.option("--lora-targets", default=None,
                     help="Comma-separated module names (default: all attention and MLP "
                          "projections of the architecture)."),
        click.option("--lr", type=float, default=DEFAULTS.lr, show_default=True),
        click.option("--batch-size", type=int, default=DEFAULTS.batch_size, show_default=True),
        click.option("--collect-batch-size", type=int, default=DEFAULTS.collect_batch_size,
                     show_default=True),
        click.option("--max-length", type=int, default=DEFAULTS.max_length, show_default=True),
        click.option("--grad-clip", type=float, default=DEFAULTS.grad_clip, show_default=True),
        click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]),
                     default=DEFAULTS.device, show_default=True),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]),
                     default=DEFAULTS.dtype, show_default=True),
        click.option("--template", type=click.Choice(["auto", "plain", "chat"]),
                     default=DEFAULTS.template, show_default=True),
        click.option("--turns", type=click.Choice(["all", "last"]), default=DEFAULTS.turns,
                     show_default=True, help="Which assistant turns carry loss."),
        click.option("--save-adapters", type=click.Path(path_type=Path), default=None,
                     help="Write every member's PEFT adapter at each collected epoch here."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def select_options(command):
    options = [
        click.option("--ratio", type=float, default=None, help="Fraction of records to keep."),
        click.option("--count", type=int, default=None, help="Number of records to keep."),
        click.option("--utility", type=click.Choice(UTILITIES), default="gsnr",
                     show_default=True),
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
    from .formats import parse_fields
    from .pipeline import read_dataset

    return read_dataset(data, fmt, limit, parse_fields(fields), split=split,
                        skip_bad_records=skip_bad_records)


def _config(options: dict) -> ScoreConfig:
    names = {f.name for f in fields(ScoreConfig)}
    values = {k: v for k, v in options.items() if k in names}
    if values.get("lora_targets"):
        values["lora_targets"] = tuple(t.strip() for t in values["lora_targets"].split(","))
    return ScoreConfig(**values)


@click.group()
@click.version_option(package_name="gradfilter")
def app() -> None:
    """Select the high-value part of an instruction-tuning dataset by gradient signal-to-noise.

    DATA: a .json/.jsonl(.gz)/.parquet file, a directory written by a Hugging Face dataset's
    save_to_disk, or a hub dataset id (owner/name).
    """


@app.command()
@click.argument("data")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Statistics table (Parquet).")
@data_options
@skip_option
@score_options
def score(data: str, out: Path, fmt, fields, limit, split, skip_bad_records, save_adapters,
          quiet, **options) -> None:
    """Train the LoRA ensemble on DATA and write the per-example statistics table."""
    from .pipeline import record_notes
    from .pipeline import score as run_score

    dataset = _read(data, fmt, fields, limit, split, skip_bad_records)
    table = run_score(dataset, out, _config(options), save_adapters=save_adapters,
                      skip_bad_records=skip_bad_records, progress=not quiet)
    unscored = sum(reason is not None for reason in table.column("skip_reason").to_pylist())
    console.print(f"statistics table: {out} ({table.num_rows} records, {unscored} unscored: "
                  "reasons in the table's skip_reason and the run record)")
    for line in _recoveries(dataset.report, record_notes(dataset)):
        console.print(line, markup=False)


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
    from .pipeline import load_stats, select_subset

    table = load_stats(stats)
    subset = select_subset(data, table, out, fmt=fmt, fields=parse_fields(fields), limit=limit,
                           split=split, remember=_preview_indices(table, options["utility"]),
                           **options)
    _summary(subset, table, options["utility"], out, stats)


@app.command()
@click.argument("data")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Subset file (a directory for --out-format hf).")
@click.option("--stats", type=click.Path(path_type=Path), default=None,
              help="Statistics table (default: <out>.stats.parquet).")
@data_options
@out_format_option
@select_options
@skip_option
@score_options
def run(data: str, out: Path, stats: Path | None, fmt, fields, limit, split, out_format,
        skip_bad_records, save_adapters, quiet, ratio, count, utility, order, score_field,
        **options) -> None:
    """Score DATA and write the selected subset in one go (default --ratio 0.1)."""
    if ratio is None and count is None:
        ratio = 0.1
    _score_and_select(_read(data, fmt, fields, limit, split, skip_bad_records), out, stats,
                      _config(options),
                      dict(save_adapters=save_adapters, skip_bad_records=skip_bad_records,
                           progress=not quiet),
                      dict(ratio=ratio, count=count, utility=utility, order=order,
                           score_field=score_field, out_format=out_format))


def _score_and_select(dataset, out: Path, stats: Path | None, config: ScoreConfig, how: dict,
                      choice: dict) -> None:
    from .pipeline import record_notes, select_subset
    from .pipeline import score as run_score

    stats = stats or out.with_name(out.name + ".stats.parquet")
    table = run_score(dataset, stats, config, **how)
    subset = select_subset(dataset, table, out,
                           remember=_preview_indices(table, choice["utility"]), **choice)
    _summary(subset, table, choice["utility"], out, stats, record_notes(dataset))


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


@app.command()
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("gradfilter-demo"),
              show_default=True)
@click.option("--records", type=int, default=24, show_default=True)
@click.option("--quiet", is_flag=True)
def demo(out_dir: Path, records: int, quiet: bool) -> None:
    """Run the whole pipeline offline on the embedded default (ShareGPT sample, SmolLM2-135M)."""
    from .demo import demo_config, demo_data

    data, config = demo_data(), demo_config()
    console.print(f"demo: first {records} conversations of {data}\n      proxy {config.proxy}")
    _score_and_select(_read(data, None, None, records), out_dir / "subset.json",
                      out_dir / "stats.parquet", config, dict(progress=not quiet),
                      dict(ratio=0.25, utility="gsnr", score_field="gsnr"))


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


def _preview_indices(table, utility: str) -> list[int]:
    """The 3 best and 3 worst records by `utility`: the summary shows their prompts."""
    from .selection import select_top
    from .utilities import utility_scores

    ranked = select_top(utility_scores(table, utility), ratio=1.0).indices
    return [int(i) for i in (*ranked[:3], *ranked[::-1][:3])]


def _preview(subset, record) -> str:
    turns = subset.turns(record)
    prompt = next((t.text for t in turns if t.role == "user"), "")
    text = " ".join(prompt.split())
    return text[:70] + ("..." if len(text) > 70 else "")


def _summary(subset, table, utility: str, out: Path, stats: Path,
             notes: dict | None = None) -> None:
    from .outputs import run_record_path
    from .selection import select_top
    from .utilities import utility_scores

    selection = subset.selection
    scores = utility_scores(table, utility)
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
