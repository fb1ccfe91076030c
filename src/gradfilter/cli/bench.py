"""`gradfilter bench`: how well each method selects (noise) and how fast it scores (speed).

Torch is imported when a benchmark runs, not when this module loads.
"""

from __future__ import annotations

import importlib
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console

from ..utilities import BASELINE_SCORES, UTILITIES
from .options import (
    config_from,
    csv_floats,
    csv_list,
    data_options,
    read_data,
    score_options,
)
from .report import console

BENCH_SCORE_OPTIONS = score_options("method", "save_adapters", "checkpoint_dir",
                                    "checkpoint_every")


@click.group()
def bench() -> None:
    """Benchmarks: how well each method selects (noise) and how fast it scores."""


@bench.command()
@click.argument("data")
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
@BENCH_SCORE_OPTIONS
def noise(data: str, out_dir: Path, fraction: float, corruptions: str, corrupt_seed: int,
          methods: str, budgets: str, plugins: tuple[str, ...], fmt, fields, limit, split, quiet,
          **options) -> None:
    """Corrupt part of DATA, score it with every method, report contamination and AUROC."""
    from ..bench.noise import results_markdown, run_noise_benchmark

    for module in plugins:
        importlib.import_module(module)
    results = run_noise_benchmark(
        read_data(data, fmt, fields, limit, split), out_dir, config_from(options),
        methods=csv_list(methods), corruptions=csv_list(corruptions), fraction=fraction,
        budgets=csv_floats(budgets, "--budgets"), corrupt_seed=corrupt_seed,
        progress=not quiet, log=console.print)
    Console(soft_wrap=True).print(results_markdown(results), markup=False)
    console.print(f"results: {out_dir / 'results.md'}, {out_dir / 'results.json'}, "
                  f"plots {out_dir / 'contamination.png'}, {out_dir / 'distributions.png'}")


@bench.command()
@click.argument("data")
@click.option("--paths", default="fused,naive,ifd", show_default=True,
              help="fused (gradfilter), naive (PEFT per member, one backward per example), "
                   "ifd (forward only).")
@click.option("--tokenizer", default=None,
              help="With --proxy random-gpt2[:LAYERS:WIDTH]: whose tokenizer to use "
                   "(default: the demo's SmolLM2).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Also write the figures as JSON here.")
@data_options
@BENCH_SCORE_OPTIONS
def speed(data: str, paths: str, tokenizer, out, fmt, fields, limit, split, quiet,
          **options) -> None:
    """Time gradfilter's fused scoring against a naive PEFT loop and a forward-only IFD pass."""
    from ..bench.speed import random_gpt2, run_speed_benchmark, speed_table
    from ..demo import demo_config
    from ..outputs import atomic_write_text, write_run_record
    from ..scoring.proxy import load_tokenizer
    from ..scoring.score import tokenize

    config = config_from(options)
    with tempfile.TemporaryDirectory(prefix="gradfilter-speed-") as scratch:
        if config.proxy.startswith("random-gpt2"):
            config = replace(config, proxy=random_gpt2(
                config.proxy, tokenizer or demo_config().proxy, Path(scratch)))
        dataset = read_data(data, fmt, fields, limit, split)
        tokens = tokenize(dataset, load_tokenizer(config.proxy), config, True)
        report = run_speed_benchmark([tokens.encoded[i] for i in tokens.scorable], config,
                                     tuple(csv_list(paths)), log=console.print)
    report["data"], report["proxy_requested"] = str(data), options["proxy"]
    Console(soft_wrap=True).print(speed_table(report), markup=False)
    if out is not None:
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        write_run_record(out, {"stage": "bench speed", **report})
