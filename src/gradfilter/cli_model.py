"""The commands that load a model: score, run (score and select) and demo.

`cli` loads this module only when one of them runs, so that `select` and `inspect` never import
torch.
"""

from __future__ import annotations

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
from .gradstats import ScoreConfig
from .utilities import utility_scores

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
