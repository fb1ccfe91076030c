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

from ..diversity import DEFAULT_THRESHOLD, DIVERSITY
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
@click.option("--diversity", type=click.Choice(DIVERSITY), default="none", show_default=True,
              help="dedup: also measure each method's selection with near-duplicates removed "
                   "(by the G-SNR run's gradient sketches) against its plain top-k.")
@click.option("--diversity-threshold", type=float, default=DEFAULT_THRESHOLD,
              show_default=True, help="The cosine at or above which dedup removes a record.")
@data_options
@BENCH_SCORE_OPTIONS
def noise(data: str, out_dir: Path, fraction: float, corruptions: str, corrupt_seed: int,
          methods: str, budgets: str, plugins: tuple[str, ...], diversity: str,
          diversity_threshold: float, fmt, fields, limit, split, quiet, **options) -> None:
    """Corrupt part of DATA, score it with every method, report contamination and AUROC."""
    from ..bench.noise import results_markdown, run_noise_benchmark

    for module in plugins:
        importlib.import_module(module)
    results = run_noise_benchmark(
        read_data(data, fmt, fields, limit, split), out_dir, config_from(options),
        methods=csv_list(methods), corruptions=csv_list(corruptions), fraction=fraction,
        budgets=csv_floats(budgets, "--budgets"), corrupt_seed=corrupt_seed,
        progress=not quiet, log=console.print, diversity=diversity,
        diversity_threshold=diversity_threshold)
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


@bench.command()
@click.option("--model", "models", multiple=True, required=True, metavar="NAME=PATH",
              help="A fine-tuned target (a PEFT adapter directory from bench finetune, or any "
                   "model path); at least two.")
@click.option("--prompts", "prompt_paths", multiple=True, required=True,
              type=click.Path(path_type=Path),
              help="A prompts file (JSONL), or a directory holding the five test sets "
                   "(vicuna, koala, wizardlm, sinstruct, lima); repeatable.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--judge-url", required=True,
              help="Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1.")
@click.option("--judge-model", required=True, help="The judge's model name at that URL.")
@click.option("--key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the API key (none needed locally).")
@click.option("--limit", type=int, default=None, help="The first N prompts of each test set.")
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--pairs", type=click.Choice(["all", "first"]), default="all", show_default=True,
              help="Every pair of models, or the first against each of the others.")
@click.option("--retries", type=int, default=3, show_default=True,
              help="Extra tries of a judge reply that cannot be parsed.")
@click.option("--concurrency", type=int, default=4, show_default=True,
              help="Judge requests in flight at once.")
@click.option("--judge-max-tokens", type=int, default=1024, show_default=True)
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds per judge request.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Answers and judgments cache (default: OUT/cache); a rerun is free.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
def judge(models: tuple[str, ...], prompt_paths: tuple[Path, ...], out_dir: Path,
          **options) -> None:
    """Answer the test prompts with each model and let an LLM judge every pair, both orders."""
    from ..bench.judge import default_prompt_files, results_markdown, run_judge_benchmark
    from ..errors import GradfilterError

    named = {}
    for spec in models:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise GradfilterError(f"--model must be NAME=PATH, got {spec!r}")
        named[name] = path
    files = [f for p in prompt_paths for f in (default_prompt_files(p) if p.is_dir() else [p])]
    results = run_judge_benchmark(named, files, out_dir, log=console.print, **options)
    Console(soft_wrap=True).print(results_markdown(results), markup=False)
    console.print(f"results: {out_dir / 'results.md'}, {out_dir / 'results.json'}")
