"""The commands that load a model: score, run (score and select) and demo.

`cli` loads this module only when one of them runs, so that `select` and `inspect` never import
torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import click

from .cli import (
    _preview_indices,
    _read,
    _recoveries,
    _summary,
    console,
    data_options,
    out_format_option,
    select_options,
    skip_option,
)
from .config import METHODS, ScoreConfig
from .table import default_utility, utility_scores

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
        "length_bucketing": click.option(
            "--bucket/--no-bucket", "length_bucketing", default=DEFAULTS.length_bucketing,
            show_default=True,
            help="Batch examples of similar length together (changes the scores)."),
        "save_adapters": click.option(
            "--save-adapters", type=click.Path(path_type=Path), default=None,
            help="Write every member's PEFT adapter at each collected epoch here."),
        "checkpoint_dir": click.option(
            "--checkpoint-dir", type=click.Path(path_type=Path), default=None,
            help="Commit the run's state here as it goes; rerunning with the same settings "
                 "continues from the last commit (kept after the end)."),
        "checkpoint_every": click.option(
            "--checkpoint-every", type=click.IntRange(min=1), default=50, show_default=True,
            help="Commit every N optimiser steps (and N collection batches)."),
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


def _config(options: dict) -> ScoreConfig:
    names = {f.name for f in fields(ScoreConfig)}
    values = {k: v for k, v in options.items() if k in names}
    if values.get("lora_targets"):
        values["lora_targets"] = tuple(t.strip() for t in values["lora_targets"].split(","))
    return ScoreConfig(**values)


@click.command()
@click.argument("data")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Statistics table (Parquet).")
@data_options
@skip_option
@score_options
def score(data: str, out: Path, fmt, fields, limit, split, skip_bad_records, method,
          save_adapters, checkpoint_dir, checkpoint_every, quiet, **options) -> None:
    """Score DATA (the LoRA ensemble, or a baseline) and write the statistics table.

    Under torchrun (e.g. `torchrun --nproc_per_node 4 -m gradfilter score ...`) the ranks
    split the ensemble's members; rank 0 writes the table.
    """
    from .distributed import is_main_process
    from .pipeline import record_notes
    from .pipeline import score as run_score

    dataset = _read(data, fmt, fields, limit, split, skip_bad_records)
    table = run_score(dataset, out, _config(options), method=method, save_adapters=save_adapters,
                      skip_bad_records=skip_bad_records, progress=not quiet,
                      checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every)
    if not is_main_process():
        return
    unscored = sum(reason is not None for reason in table.column("skip_reason").to_pylist())
    console.print(f"statistics table: {out} ({table.num_rows} records, {unscored} unscored: "
                  "reasons in the table's skip_reason and the run record)")
    for line in _recoveries(dataset.report, record_notes(dataset)):
        console.print(line, markup=False)


@click.command()
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
        skip_bad_records, method, save_adapters, checkpoint_dir, checkpoint_every, quiet, ratio,
        count, utility, order, score_field, **options) -> None:
    """Score DATA and write the selected subset in one go (default --ratio 0.1)."""
    if ratio is None and count is None:
        ratio = 0.1
    _score_and_select(_read(data, fmt, fields, limit, split, skip_bad_records), out, stats,
                      _config(options),
                      dict(method=method, save_adapters=save_adapters,
                           skip_bad_records=skip_bad_records, progress=not quiet,
                           checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every),
                      dict(ratio=ratio, count=count, utility=utility, order=order,
                           score_field=score_field, out_format=out_format))


def _score_and_select(dataset, out: Path, stats: Path | None, config: ScoreConfig, how: dict,
                      choice: dict) -> None:
    from .distributed import is_main_process
    from .pipeline import record_notes, select_subset
    from .pipeline import score as run_score

    stats = stats or out.with_name(out.name + ".stats.parquet")
    table = run_score(dataset, stats, config, **how)
    if not is_main_process():
        return
    choice["utility"] = choice["utility"] or default_utility(table)
    scores = utility_scores(table, choice["utility"])
    subset = select_subset(dataset, table, out, remember=_preview_indices(scores), **choice)
    _summary(subset, scores, choice["utility"], out, stats, record_notes(dataset))


@click.command()
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
