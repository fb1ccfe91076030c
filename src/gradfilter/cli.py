"""The `gradfilter` command line: score, select, run (both) and demo."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import click
from rich.console import Console

from .errors import GradfilterError
from .formats import CONTAINERS, FORMATS
from .gradstats import ScoreConfig
from .pipeline import METHODS
from .utilities import BASELINE_SCORES, UTILITIES

console = Console(stderr=True)
DEFAULTS = ScoreConfig()


def _default(name: str, **kwargs) -> Callable:
    """An option whose default is ScoreConfig's field of the same name."""
    field = name.lstrip("-").replace("-", "_")
    return click.option(name, default=getattr(DEFAULTS, field), show_default=True, **kwargs)


def _score_option_table() -> dict[str, Callable]:
    """The options of `score` and `run` by parameter name."""
    return {
        "method": click.option(
            "--method", type=click.Choice(METHODS), default="gsnr", show_default=True,
            help="gsnr (the LoRA ensemble) or a baseline: ifd, perplexity, length, random."),
        "proxy": _default("--proxy", help="Hub id, local directory or .gguf file of a causal LM."),
        "members": _default("--members", type=int),
        "epochs": _default("--epochs", type=int),
        "early": _default("--early", type=int, help="Epoch s of the early gradient snapshot."),
        "late": _default("--late", type=int, help="Epoch t of the late gradient snapshot."),
        "lora_rank": _default("--lora-rank", type=int),
        "lora_alpha": _default("--lora-alpha", type=float),
        "lora_targets": click.option(
            "--lora-targets", default=None,
            help="Comma-separated module names (default: all attention and MLP projections "
                 "of the architecture)."),
        "lr": _default("--lr", type=float),
        "batch_size": _default("--batch-size", type=int),
        "collect_batch_size": _default(
            "--collect-batch-size", type=int,
            help="Batch size of gradient collection and of forward-only (baseline) passes."),
        "max_length": _default("--max-length", type=int),
        "grad_clip": _default("--grad-clip", type=float),
        "seed": _default("--seed", type=int),
        "device": _default("--device", type=click.Choice(["auto", "cpu", "cuda"])),
        "dtype": _default("--dtype", type=click.Choice(["auto", "float32", "bfloat16"])),
        "template": _default("--template", type=click.Choice(["auto", "plain", "chat"])),
        "turns": _default("--turns", type=click.Choice(["all", "last"]),
                          help="Which assistant turns carry loss."),
        "save_adapters": click.option(
            "--save-adapters", type=click.Path(path_type=Path), default=None,
            help="Write every member's PEFT adapter at each collected epoch here."),
        "quiet": click.option("--quiet", is_flag=True, help="No progress bars."),
    }


def score_options(command, exclude: tuple[str, ...] = ()):
    """Add the scoring options (method.md §2) to `command`, except those in `exclude`."""
    for name, option in reversed(_score_option_table().items()):
        if name not in exclude:
            command = option(command)
    return command


def score_options_except(*exclude: str):
    return lambda command: score_options(command, exclude)


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
def score(data: Path, out: Path, fmt, fields, limit, skip_bad_records, method, save_adapters,
          quiet, **options) -> None:
    """Train the LoRA ensemble on DATA and write the per-example statistics table."""
    from .pipeline import score as run_score

    run_score(_read(data, fmt, fields, limit), out, _config(options), method=method,
              save_adapters=save_adapters, skip_bad_records=skip_bad_records,
              progress=not quiet)
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
        skip_bad_records, method, save_adapters, quiet, ratio, count, utility, order,
        score_field, **options) -> None:
    """Score DATA and write the selected subset in one go (default --ratio 0.1)."""
    if ratio is None and count is None:
        ratio = 0.1
    _score_and_select(_read(data, fmt, fields, limit), out, stats, _config(options),
                      dict(method=method, save_adapters=save_adapters,
                           skip_bad_records=skip_bad_records, progress=not quiet),
                      dict(ratio=ratio, count=count, utility=utility, order=order,
                           score_field=score_field, out_format=out_format))


def _score_and_select(dataset, out: Path, stats: Path | None, config: ScoreConfig, how: dict,
                      choice: dict) -> None:
    from .pipeline import score as run_score
    from .pipeline import select as run_select

    stats = stats or out.with_name(out.name + ".stats.parquet")
    table = run_score(dataset, stats, config, **how)
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


@app.group()
def bench() -> None:
    """Benchmarks: how well each method selects (noise) and how fast it scores."""


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@bench.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out-dir", type=click.Path(path_type=Path), required=True)
@click.option("--corrupt", "fraction", type=float, default=0.2, show_default=True,
              help="Fraction of records to corrupt.")
@click.option("--corruptions", default="swap,truncate,repeat,echo", show_default=True,
              help="Corruption types, applied in equal shares.")
@click.option("--corrupt-seed", type=int, default=0, show_default=True)
@click.option("--methods", default=",".join((*UTILITIES, *BASELINE_SCORES)), show_default=True,
              help="Utilities and baselines to compare (the G-SNR utilities share one run).")
@click.option("--budgets", default="0.05,0.1,0.15", show_default=True,
              help="Fractions of records kept at which contamination is reported.")
@click.option("--plugin", "plugins", multiple=True,
              help="Import this module first (it may register corruptions).")
@data_options
@score_options_except("method", "save_adapters")
def noise(data: Path, out_dir: Path, fraction: float, corruptions: str, corrupt_seed: int,
          methods: str, budgets: str, plugins: tuple[str, ...], fmt, fields, limit, quiet,
          **options) -> None:
    """Corrupt part of DATA, score it with every method, report contamination and AUROC."""
    import importlib

    from .noise_benchmark import results_markdown, run_noise_benchmark

    for module in plugins:
        importlib.import_module(module)
    try:
        budget_values = [float(b) for b in _csv(budgets)]
    except ValueError:
        raise GradfilterError(
            f"--budgets must be comma-separated numbers, got {budgets!r}") from None
    results = run_noise_benchmark(
        _read(data, fmt, fields, limit), out_dir, _config(options), methods=_csv(methods),
        corruptions=_csv(corruptions), fraction=fraction, budgets=budget_values,
        corrupt_seed=corrupt_seed, progress=not quiet, log=console.print)
    Console(soft_wrap=True).print(results_markdown(results), markup=False)
    console.print(f"results: {out_dir / 'results.md'}, {out_dir / 'results.json'}, "
                  f"plots {out_dir / 'contamination.png'}, {out_dir / 'distributions.png'}")


@bench.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--paths", default="fused,naive,ifd", show_default=True,
              help="fused (gradfilter), naive (PEFT per member, one backward per example), "
                   "ifd (forward only).")
@click.option("--tokenizer", default=None,
              help="With --proxy random-gpt2[:LAYERS:WIDTH]: whose tokenizer to use "
                   "(default: the demo's SmolLM2).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Also write the figures as JSON here.")
@data_options
@score_options_except("method", "save_adapters")
def speed(data: Path, paths: str, tokenizer, out, fmt, fields, limit, quiet, **options) -> None:
    """Time gradfilter's fused scoring against a naive PEFT loop and a forward-only IFD pass."""
    import json
    import tempfile

    from .outputs import atomic_write_text, write_run_record
    from .pipeline import _encode_all
    from .speed_benchmark import random_gpt2, run_speed_benchmark, speed_table

    config = _config(options)
    if config.proxy.startswith("random-gpt2"):
        from .demo import demo_config

        directory = Path(tempfile.mkdtemp(prefix="gradfilter-speed-"))
        config = replace(config, proxy=random_gpt2(config.proxy, tokenizer or demo_config().proxy,
                                                   directory))
    dataset = _read(data, fmt, fields, limit)
    from .proxy import load_tokenizer

    _, encoded, reasons = _encode_all(dataset, load_tokenizer(config.proxy), config, True)
    usable = [item for item, reason in zip(encoded, reasons, strict=True) if reason is None]
    report = run_speed_benchmark(usable, config, tuple(_csv(paths)), log=console.print)
    report["data"] = str(data)
    Console(soft_wrap=True).print(speed_table(report), markup=False)
    if out is not None:
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        write_run_record(out, {"stage": "bench speed", **report})


def _preview(dataset, record) -> str:
    turns = dataset.turns(record)
    prompt = next((t.text for t in turns if t.role == "user"), "")
    text = " ".join(prompt.split())
    return text[:70] + ("..." if len(text) > 70 else "")


def _summary(dataset, table, selection, utility: str, out: Path, stats: Path) -> None:
    from .outputs import run_record_path
    from .selection import select_top
    from .utilities import default_utility, utility_scores

    utility = utility or default_utility(table)
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
