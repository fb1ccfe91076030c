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
        click.option("--bucket/--no-bucket", "length_bucketing", default=DEFAULTS.length_bucketing,
                     show_default=True,
                     help="Batch examples of similar length together (changes the scores)."),
        click.option("--save-adapters", type=click.Path(path_type=Path), default=None,
                     help="Write every member's PEFT adapter at each collected epoch here."),
        click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=None,
                     help="Commit the run's state here as it goes; rerunning with the same "
                          "settings continues from the last commit (kept after the end)."),
        click.option("--checkpoint-every", type=click.IntRange(min=1), default=50,
                     show_default=True,
                     help="Commit every N optimiser steps (and N collection batches)."),
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
    """How DATA is read: format override, key-name mapping, first N records."""
    options = [
        click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                     help="Override the detected format."),
        click.option("--fields", default=None,
                     help="Map key names onto the format, e.g. instruction=question,"
                          "output=answer."),
        click.option("--limit", type=int, default=None, help="Use only the first N records."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


out_format_option = click.option(
    "--out-format", type=click.Choice(CONTAINERS), default=None,
    help="Container of the subset (default: the input's).")
skip_option = click.option(
    "--skip-bad-records", is_flag=True,
    help="Keep records that fail validation as unscored rows (listed in the run record) "
         "instead of stopping.")


def _read(data: Path, fmt, fields, limit):
    from .formats import parse_fields
    from .pipeline import read_dataset

    return read_dataset(data, fmt, limit, parse_fields(fields))


def _config(options: dict) -> ScoreConfig:
    names = {f.name for f in fields(ScoreConfig)}
    values = {k: v for k, v in options.items() if k in names}
    if values.get("lora_targets"):
        values["lora_targets"] = tuple(t.strip() for t in values["lora_targets"].split(","))
    return ScoreConfig(**values)


@click.group()
@click.version_option(package_name="gradfilter")
def app() -> None:
    """Select the high-value part of an instruction-tuning dataset by gradient signal-to-noise."""


@app.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Statistics table (Parquet).")
@data_options
@skip_option
@score_options
def score(data: Path, out: Path, fmt, fields, limit, skip_bad_records, save_adapters, quiet,
          checkpoint_dir, checkpoint_every, **options) -> None:
    """Train the LoRA ensemble on DATA and write the per-example statistics table.

    Under torchrun (e.g. `torchrun --nproc_per_node 4 -m gradfilter score ...`) the ranks
    split the ensemble's members; rank 0 writes the table.
    """
    from .distributed import is_main_process
    from .pipeline import score as run_score

    run_score(_read(data, fmt, fields, limit), out, _config(options),
              save_adapters=save_adapters, skip_bad_records=skip_bad_records,
              progress=not quiet, checkpoint_dir=checkpoint_dir,
              checkpoint_every=checkpoint_every)
    if is_main_process():
        console.print(f"statistics table: {out}")


@app.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--stats", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Subset file.")
@data_options
@out_format_option
@select_options
def select(data: Path, stats: Path, out: Path, fmt, fields, limit, **options) -> None:
    """Write the top records of DATA by a utility from a statistics table (no model needed)."""
    from .pipeline import load_stats
    from .pipeline import select as run_select

    table = load_stats(stats)
    dataset = _read(data, fmt, fields, limit)
    selection = run_select(dataset, table, out, **options)
    _summary(dataset, table, selection, options["utility"], out, stats)


@app.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Subset file.")
@click.option("--stats", type=click.Path(path_type=Path), default=None,
              help="Statistics table (default: <out>.stats.parquet).")
@data_options
@out_format_option
@select_options
@skip_option
@score_options
def run(data: Path, out: Path, stats: Path | None, fmt, fields, limit, out_format,
        skip_bad_records, save_adapters, quiet, checkpoint_dir, checkpoint_every, ratio, count,
        utility, order, score_field, **options) -> None:
    """Score DATA and write the selected subset in one go (default --ratio 0.1)."""
    if ratio is None and count is None:
        ratio = 0.1
    _score_and_select(_read(data, fmt, fields, limit), out, stats, _config(options),
                      dict(save_adapters=save_adapters, skip_bad_records=skip_bad_records,
                           progress=not quiet, checkpoint_dir=checkpoint_dir,
                           checkpoint_every=checkpoint_every),
                      dict(ratio=ratio, count=count, utility=utility, order=order,
                           score_field=score_field, out_format=out_format))


def _score_and_select(dataset, out: Path, stats: Path | None, config: ScoreConfig, how: dict,
                      choice: dict) -> None:
    from .distributed import is_main_process
    from .pipeline import score as run_score
    from .pipeline import select as run_select

    stats = stats or out.with_name(out.name + ".stats.parquet")
    table = run_score(dataset, stats, config, **how)
    if not is_main_process():
        return
    selection = run_select(dataset, table, out, **choice)
    _summary(dataset, table, selection, choice["utility"], out, stats)


@app.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None)
@click.option("--fields", default=None, help="Map key names onto the format.")
@click.option("--max-problems", type=int, default=50, show_default=True,
              help="How many problems to print (all are counted).")
def inspect(data: Path, fmt, fields, max_problems: int) -> None:
    """Read DATA without a model: format, counts, turn and length statistics, every problem."""
    from .formats import parse_fields
    from .inspection import inspect_dataset

    found = inspect_dataset(data, fmt, parse_fields(fields))
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


def _preview(dataset, record) -> str:
    turns = dataset.turns(record)
    prompt = next((t.text for t in turns if t.role == "user"), "")
    text = " ".join(prompt.split())
    return text[:70] + ("..." if len(text) > 70 else "")


def _summary(dataset, table, selection, utility: str, out: Path, stats: Path) -> None:
    from .outputs import run_record_path
    from .selection import select_top
    from .utilities import utility_scores

    scores = utility_scores(table, utility)
    ranked = select_top(scores, ratio=1.0).indices
    out_console = Console()
    out_console.print(
        f"kept {len(selection.indices)} of {selection.n_records} records by {utility} "
        f"(asked for {selection.requested}; {selection.n_nonfinite} without a finite score)"
    )
    out_console.print(f"subset:           {out}\nstatistics table: {stats}\n"
                      f"run record:       {run_record_path(out)}")
    for title, picks in (("best", ranked[:3]), ("worst", ranked[::-1][:3])):
        out_console.print(f"{title} 3 by {utility}:")
        for i in picks:
            preview = _preview(dataset, dataset.records[i])
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
