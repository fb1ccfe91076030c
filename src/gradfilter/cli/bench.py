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

from ..bench.corruptions import OPT_IN, SHIPPED
from ..bench.finetune_measures import DEFAULT_EPOCHS, MIN_RANDOM_DRAWS
from ..bench.selectors import CLUSTERED, DEFAULT_BALANCE_FIELD, SELECTORS
from ..config import ScoreConfig
from ..diversity import DEFAULT_THRESHOLD, DIVERSITY
from ..report import REPORT_NAME
from ..utilities import BASELINE_SCORES, RDS_SCORES, TARGET_UTILITIES, UTILITIES
from .human import human
from .options import (
    allow_mismatch_option,
    baseline_help,
    config_from,
    csv_list,
    csv_numbers,
    data_options,
    named_paths,
    quiet_option,
    read_data,
    score_options,
    threads_option,
)
from .report import console

BENCH_SCORE_OPTIONS = score_options("method", "save_adapters", "checkpoint_dir",
                                    "checkpoint_every", "target_examples",
                                    "member_groups")
# Every baseline in both directions where it has two; plain `perplexity` (perplexity-high's
# other name) is left out so that no ranking is measured twice.
# The alignment utilities and RDS+ need target examples: added by --target-examples.
BENCH_METHODS = (*(u for u in UTILITIES if u not in TARGET_UTILITIES),
                 *(b for b in BASELINE_SCORES if b != "perplexity"), *CLUSTERED)
SELECTOR_HELP = ("Selectors (a subset at each budget, measured beside the rankings): coverage "
                 "(k-means over the G-SNR run's trajectories, the budget spread evenly over "
                 "the clusters, highest G-SNR in each), s2l (the same clusters, a seeded "
                 "random draw in each: S2L), balanced_random (a seeded random draw in each "
                 "value of --balance-field; named only).")
BALANCE_OPTION = click.option(
    "--balance-field", default=DEFAULT_BALANCE_FIELD, show_default=True, metavar="FIELD",
    help="balanced_random's source field: a top-level field of the records with a few values "
         "(a source, a task, a language).")


@click.group()
def bench() -> None:
    """Benchmarks: how well each method selects (noise) and how fast it scores."""


bench.add_command(human)


@bench.command()
@click.argument("data")
@click.option("--out-dir", type=click.Path(path_type=Path), required=True)
@click.option("--corrupt", "fraction", type=float, default=0.2, show_default=True,
              help="Fraction of records to corrupt.")
@click.option("--corruptions", default=",".join(SHIPPED), show_default=True,
              help="Corruption types, applied in equal shares. Opt-in kinds: "
                   f"{', '.join(OPT_IN)} (docs/method.md, 'Noise benchmark').")
@click.option("--corrupt-seeds", default="0", show_default=True,
              help="Corruption draws (comma-separated seeds): each is scored and measured; "
                   "with several, the intervals are Student's t over the draws.")
@click.option("--methods", default=",".join(BENCH_METHODS), show_default=True,
              help="Utilities (highest first; loss: lowest loss first), baselines and selectors "
                   "to compare (the G-SNR utilities and coverage, s2l share one run, both "
                   "perplexity directions IFD's pass). Baselines: " + baseline_help() + ". "
                   + SELECTOR_HELP)
@click.option("--budgets", default="0.05,0.1,0.15", show_default=True,
              help="Fractions of records kept at which contamination is reported.")
@click.option("--plugin", "plugins", multiple=True,
              help="Import this module first (it may register corruptions).")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), default=None,
              help="DATA is corrupted already and this is its labels file (as bench noise "
                   "writes it: index, source_index, corruption; one row per record of DATA): "
                   "no corruption is drawn, so --corrupt and --corruptions do not apply.")
@click.option("--table", "tables", multiple=True, metavar="RUN=PATH",
              help="A finished statistics table of the mixed set for a scoring run (gsnr, ifd, "
                   "perplexity, loss, length, random), e.g. one scored with --checkpoint-dir; "
                   "one corruption seed only.")
@click.option("--resamples", type=click.IntRange(min=100), default=1000, show_default=True,
              help="Bootstrap resamples of the intervals.")
@click.option("--diversity", type=click.Choice(DIVERSITY), default="none", show_default=True,
              help="dedup: also measure each method's selection with near-duplicates removed "
                   "(by the G-SNR run's gradient sketches) against its plain top-k.")
@click.option("--diversity-threshold", type=float, default=DEFAULT_THRESHOLD,
              show_default=True, help="The cosine at or above which dedup removes a record.")
@allow_mismatch_option
@click.option("--target-examples", type=click.Path(path_type=Path), default=None,
              help="Score the G-SNR run with these target examples (score --target-examples), "
                   "and the IFD run where RDS+ is measured; the default --methods then include "
                   + ", ".join((*TARGET_UTILITIES, *RDS_SCORES)) + ".")
@BALANCE_OPTION
@data_options
@BENCH_SCORE_OPTIONS
def noise(data: str, out_dir: Path, fraction: float, corruptions: str, corrupt_seeds: str,
          methods: str, budgets: str, plugins: tuple[str, ...], labels_file: Path | None,
          tables: tuple[str, ...], resamples: int, diversity: str, diversity_threshold: float,
          allow_data_mismatch: bool, balance_field: str, target_examples: Path | None, fmt,
          fields, limit, split, quiet,
          **options) -> None:
    """Corrupt part of DATA (or take DATA as corrupted, with --labels), score it with every
    method, report AUROC, AUPRC and contamination, and whether each method is better than,
    tied with or worse than random's expectation, IFD and length; and what each method's
    selection cost (row-tokens, wall time) beside fine-tuning on its subset and on the pool."""
    from ..bench.noise import results_markdown, run_noise_benchmark
    from ..errors import GradfilterError
    from ..paths import reads, refuse_collisions, writes
    from ..threads import use_threads

    if labels_file is not None:
        ctx = click.get_current_context()
        drawn = [f"--{name}" for name in ("corrupt", "corruptions")
                 if ctx.get_parameter_source("fraction" if name == "corrupt" else name)
                 is not click.core.ParameterSource.DEFAULT]
        if drawn:
            raise GradfilterError(f"{' and '.join(drawn)}: nothing is corrupted with --labels "
                                  "(DATA is corrupted already)")
    plugin_files = [reads("the plugin", "--plugin", plugin_file(module)) for module in plugins]
    refuse_collisions(
        [*reads("the data", "DATA", data), *reads("the proxy", "--proxy", options["proxy"]),
         *reads("the labels", "--labels", labels_file),
         *reads("the target examples", "--target-examples", target_examples),
         *(named for found in plugin_files for named in found)],
        writes("the output directory", "--out-dir", out_dir, "dir", run_record=False))
    check_page(out_dir)
    for module in plugins:
        import_plugin(module)
    use_threads(options.pop("threads"))
    chosen = csv_list(methods)
    if target_examples is not None and click.get_current_context().get_parameter_source(
            "methods") is click.core.ParameterSource.DEFAULT:
        chosen += [*TARGET_UTILITIES, *RDS_SCORES]
    results = run_noise_benchmark(
        read_data(data, fmt, fields, limit, split), out_dir, config_from(options),
        methods=chosen, corruptions=csv_list(corruptions), fraction=fraction,
        budgets=csv_numbers(budgets, "--budgets"),
        corrupt_seeds=csv_numbers(corrupt_seeds, "--corrupt-seeds", int),
        tables=named_paths(tables, "--table"), resamples=resamples, progress=not quiet,
        log=console.print, diversity=diversity, diversity_threshold=diversity_threshold,
        labels=labels_file, allow_data_mismatch=allow_data_mismatch,
        balance_field=balance_field, target_examples=target_examples)
    Console(soft_wrap=True).print(results_markdown(results), markup=False)
    console.print(f"results: {out_dir / 'results.md'}, {out_dir / 'results.json'}")
    print_page(out_dir)


@bench.command()
@click.argument("data")
@click.option("--paths", default="fused,naive,ifd", show_default=True,
              help="fused (gradfilter, as --collect says), naive (PEFT per member, one "
                   "backward per example), ifd (forward only), during and snapshot (the fused "
                   "path in each --collect mode; both: their speed ratio and rank agreement); "
                   "fused+target, during+target, snapshot+target: the path with "
                   "--target-examples (beside the plain path: the overhead ratio). Default "
                   "with --target-examples: during,during+target.")
@click.option("--target-examples", type=click.Path(path_type=Path), default=None,
              help="Target examples for the +target paths (any input format; the pool's "
                   "template and masks), as score --target-examples takes them.")
@click.option("--tokenizer", default=None,
              help="With --proxy random-gpt2[:LAYERS:WIDTH]: whose tokenizer to use "
                   "(default: the demo's SmolLM2).")
@click.option("--out", type=click.Path(), default=None,
              help="Also write the figures as JSON here.")
@data_options
@score_options("method", "save_adapters", "checkpoint_dir", "checkpoint_every",
               "target_examples")
def speed(data: str, paths: str, target_examples: Path | None, tokenizer, out, fmt, fields,
          limit, split, quiet, member_groups, **options) -> None:
    """Time gradfilter's fused scoring against a naive PEFT loop and a forward-only IFD pass.

    Under torchrun the gradient paths run on every process (as `score` lays them out: see
    --member-groups) and on one: examples/s per process and the 1 -> W speed-up.
    """
    from ..bench.speed import random_gpt2, run_speed_benchmark, speed_paths, speed_table
    from ..data.dataset import as_dataset
    from ..demo import demo_config
    from ..outputs import atomic_write_text, write_run_record
    from ..paths import reads, refuse_collisions, writes
    from ..scoring.proxy import load_tokenizer
    from ..scoring.score import scorable_targets, tokenize
    from ..threads import use_threads

    refuse_collisions(
        [*reads("the data", "DATA", data), *reads("the proxy", "--proxy", options["proxy"]),
         *reads("the tokenizer", "--tokenizer", tokenizer),
         *reads("the target examples", "--target-examples", target_examples)],
        writes("the figures", "--out", out))
    if target_examples is not None and click.get_current_context().get_parameter_source(
            "paths") is click.core.ParameterSource.DEFAULT:
        paths = "during,during+target"
    chosen = speed_paths(csv_list(paths), target_examples is not None)
    out = Path(out) if out is not None else None  # (checked as spelled: a trailing '/')
    use_threads(options.pop("threads"))
    config = config_from(options)
    with tempfile.TemporaryDirectory(prefix="gradfilter-speed-") as scratch:
        if config.proxy.startswith("random-gpt2"):
            config = replace(config, proxy=random_gpt2(
                config.proxy, tokenizer or demo_config().proxy, Path(scratch)))
        dataset = read_data(data, fmt, fields, limit, split)
        tokenizer_loaded = load_tokenizer(config.proxy)
        tokens = tokenize(dataset, tokenizer_loaded, config, True)
        target = None if target_examples is None else scorable_targets(
            tokenize(as_dataset(target_examples), tokenizer_loaded, config, False))
        report = run_speed_benchmark([tokens.encoded[i] for i in tokens.scorable], config,
                                     chosen, log=console.print, member_groups=member_groups,
                                     target=target)
    if not report:  # a torchrun rank other than 0
        return
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
    from ..bench.judge_benchmark import run_judge_benchmark
    from ..bench.pairwise_report import results_markdown
    from ..bench.prompts import default_prompt_files

    named = named_paths(models, "--model")
    from ..report.benchmarks import write_benchmark_report

    _refuse_judge_collisions(named, prompt_paths, out_dir, options["cache_dir"])
    check_page(out_dir)
    files = [f for p in prompt_paths for f in (default_prompt_files(p) if p.is_dir() else [p])]
    results = run_judge_benchmark(named, files, out_dir, log=console.print, **options)
    write_benchmark_report(out_dir)
    Console(soft_wrap=True).print(results_markdown(results), markup=False)
    console.print(f"results: {out_dir / 'results.md'}, {out_dir / 'results.json'}")
    print_page(out_dir)


@bench.command()
@click.argument("pool", required=False)
@click.option("--out-dir", type=click.Path(path_type=Path), required=True)
@click.option("--from-noise", "noise_dir", type=click.Path(path_type=Path), default=None,
              help="A `bench noise` output directory: its mixed set is the pool, its tables the "
                   "methods' scores (selection on noisy data, evaluation on clean references).")
@click.option("--table", "tables", multiple=True, metavar="METHOD=PATH",
              help="A statistics table of POOL for a method to compare; repeatable. coverage "
                   "and s2l read a G-SNR table: their own (--table coverage=PATH), else the "
                   "first table given with training trajectories.")
@click.option("--methods", default=None,
              help="Methods to compare (default: every table given, or the noise benchmark's "
                   "tables and selectors); a table of IFD's or perplexity's pass gives both "
                   "perplexity-low and perplexity-high. Baselines: " + baseline_help() + ". "
                   + SELECTOR_HELP)
@click.option("--budgets", default="0.05,0.1,0.15", show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True,
              help="Fine-tuning runs per subset: each value seeds its run's LoRA initialisation "
                   "and data order, so --seeds 0,1,2 equals --seeds 0, 1 and 2 run apart (and "
                   "reuses them).")
@click.option("--epochs", type=float, default=DEFAULT_EPOCHS, show_default=True,
              help="The budget: passes over each budget's subset; every run at that budget "
                   "(methods, random, the full pool) trains for the same steps.")
@click.option("--steps", type=int, default=None,
              help="Override the epoch budget: these optimiser steps at every budget (with a "
                   "warning: many passes over a small subset overfit it).")
@click.option("--random-draws", type=click.IntRange(min=MIN_RANDOM_DRAWS),
              default=MIN_RANDOM_DRAWS, show_default=True,
              help="Random subsets per budget: random's row is their mean, with their spread.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--lora-rank", type=int, default=8, show_default=True)
@click.option("--lora-alpha", type=float, default=16.0, show_default=True)
@click.option("--full-finetune", is_flag=True, help="Train every weight instead of a LoRA.")
@click.option("--eval-every", type=int, default=None,
              help="Held-out loss every N steps (default: a tenth of each budget's steps); "
                   "always at step 0 (the untrained model) and at the end.")
@click.option("--held-out", type=click.Path(path_type=Path), default=None,
              help="Prompts with reference answers (any input format) to measure on "
                   "(default: a seeded share of the pool's clean records, taken out of it).")
@click.option("--held-out-share", type=float, default=0.1, show_default=True)
@click.option("--group-field", default=None, metavar="FIELD",
              help="Records sharing this field's value (a conversation id) are held out "
                   "together or not at all (default: `source` where it is an exchange's "
                   "origin `<id>#<turn>`, else `id` where ids tie records together, as "
                   "ShareGPT's split conversations `<id>_<n>`).")
@click.option("--dedup", "dedup_methods", multiple=True, metavar="METHOD",
              help="Also METHOD's subset with near-duplicates removed (as select --diversity "
                   "dedup, by the G-SNR table's sketches), against its plain top-k; repeatable.")
@click.option("--diversity-threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True,
              help="The cosine at or above which --dedup removes a record.")
@click.option("--target", "proxy", default=None,
              help="The model to fine-tune (default: the noise benchmark's proxy, else gpt2).")
@click.option("--max-length", type=int, default=None,
              help="Default: the noise benchmark's, else 512.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the held-out split, random's subsets, the selectors and every "
                   "fine-tuning run.")
@BALANCE_OPTION
@threads_option
@allow_mismatch_option
@quiet_option
def finetune(pool: str | None, out_dir: Path, noise_dir: Path | None, tables: tuple[str, ...],
             methods: str | None, budgets: str, seeds: str, group_field: str | None,
             dedup_methods: tuple[str, ...], diversity_threshold: float, balance_field: str,
             threads: int | None, allow_data_mismatch: bool, quiet: bool, **options) -> None:
    """Fine-tune a target on each method's subset, random subsets and the full pool (the same
    steps at one budget: --epochs over the subset) and compare held-out curves with random's:
    the area under the curve (the declared reading) and the final loss, with intervals."""
    from ..bench.finetune import (
        FinetuneConfig,
        inputs_from_noise,
        inputs_from_pool,
        results_markdown,
        run_finetune_benchmark,
    )
    from ..errors import GradfilterError
    from ..paths import reads, refuse_collisions, writes
    from ..threads import use_threads

    if (noise_dir is None) == (pool is None):
        raise GradfilterError("give POOL (with --table) or --from-noise DIR, not both")
    refuse_collisions(
        [*reads("the pool", "POOL", pool), *reads("the noise benchmark", "--from-noise", noise_dir),
         *reads("the held-out set", "--held-out", options["held_out"]),
         *reads("the target", "--target", options["proxy"]),
         *(n for spec in tables for n in reads("a table", "--table", spec.partition("=")[2]))],
        writes("the output directory", "--out-dir", out_dir, "dir", run_record=False))
    check_page(out_dir)
    budget_values = csv_numbers(budgets, "--budgets")
    config = FinetuneConfig(
        epochs=options["epochs"], steps=options["steps"], batch_size=options["batch_size"],
        lr=options["lr"], lora_rank=options["lora_rank"], lora_alpha=options["lora_alpha"],
        eval_every=options["eval_every"], full_finetune=options["full_finetune"],
        seeds=tuple(csv_numbers(seeds, "--seeds", int)), base_seed=options["seed"],
        random_draws=options["random_draws"])
    config.validate()
    use_threads(threads)
    target = _finetune_target(noise_dir, options)
    held = (options.pop("held_out"), options.pop("held_out_share"), options["seed"])
    chosen = csv_list(methods) if methods else None
    binding = dict(allow_data_mismatch=allow_data_mismatch, log=console.print)
    if noise_dir is not None:
        inputs = inputs_from_noise(noise_dir, chosen, target, *held, group_field=group_field,
                                   balance_field=balance_field, **binding)
    else:
        named = named_paths(tables, "--table")
        if not named:
            raise GradfilterError("give the methods' statistics tables with --table METHOD=PATH")
        wanted = list(named) if chosen is None else chosen
        selectors = [m for m in wanted if m in SELECTORS]
        inputs = inputs_from_pool(pool, {m: p for m, p in named.items()
                                         if m in wanted and m not in SELECTORS}, target, *held,
                                  group_field=group_field, selectors=selectors,
                                  selector_table=next((str(named[m]) for m in CLUSTERED
                                                       if m in named), None),
                                  balance_field=balance_field, **binding)
    results = run_finetune_benchmark(inputs, out_dir, target, config, budget_values,
                                     progress=not quiet, log=console.print,
                                     dedup_methods=dedup_methods,
                                     dedup_threshold=diversity_threshold)
    Console(soft_wrap=True).print(results_markdown(results), markup=False)
    console.print(f"results: {out_dir / 'results.md'}, {out_dir / 'results.json'}, "
                  f"adapters {out_dir / 'adapters'}")
    print_page(out_dir)


def _finetune_target(noise_dir: Path | None, options: dict) -> ScoreConfig:
    """The target's settings: as given, else the noise benchmark's scoring config's."""
    base = ScoreConfig()
    if noise_dir is not None and (noise_dir / "results.json").is_file():
        noise = json.loads((noise_dir / "results.json").read_text())["config"]
        base = replace(base, proxy=noise["proxy"], max_length=noise["max_length"],
                       template=noise["template"], turns=noise["turns"])
    return replace(base, proxy=options.pop("proxy") or base.proxy,
                   max_length=options.pop("max_length") or base.max_length,
                   device=options.pop("device"), dtype=options.pop("dtype"),
                   seed=options["seed"])


def _refuse_judge_collisions(models: dict[str, str], prompt_paths: tuple[Path, ...],
                             out_dir: Path, cache_dir: Path | None) -> None:
    """The judge writes named files into OUT (the cache may live there too), and its cache."""
    from ..paths import named, reads, refuse_collisions, writes

    cache = named("the cache", "--cache-dir", cache_dir or out_dir / "cache", "dir")
    inputs = [*(n for name, path in models.items()
                for n in reads(f"the model {name}", "--model", path)),
              *(n for path in prompt_paths for n in reads("the prompts", "--prompts", path))]
    outputs = [*writes("the results", "--out", out_dir / "results.json"),
               *writes("the report", "--out", out_dir / "results.md", run_record=False),
               *(n for name in models for n in writes(
                   f"the answers of {name}", "--out", out_dir / f"answers-{name}.jsonl",
                   run_record=False)),
               cache]
    refuse_collisions([*inputs, *([cache] if cache.path.exists() else [])], outputs)


def check_page(out_dir: Path) -> None:
    """Before the run: the benchmark's page (OUT/report.html) may replace only an earlier
    page of ours."""
    from ..report.page import check_report_path

    check_report_path(out_dir / REPORT_NAME, f"the benchmark's page in --out-dir {out_dir}")


def print_page(out_dir: Path) -> None:
    console.print(f"report page: {out_dir / REPORT_NAME}", soft_wrap=True, markup=False)


def plugin_file(module: str) -> str | None:
    """Where `--plugin module` is (its file, or its package's directory), found without
    running it."""
    from importlib.util import find_spec

    from ..errors import GradfilterError

    try:
        spec = find_spec(module)
    except (ImportError, ValueError) as exc:
        raise GradfilterError(f"--plugin {module}: cannot find it: {exc}") from exc
    if spec is None:
        raise GradfilterError(f"--plugin {module}: no module named {module!r} on the Python "
                              "path (a plugin is a module name; put its folder on PYTHONPATH)")
    if spec.submodule_search_locations:
        return next(iter(spec.submodule_search_locations), None)
    return spec.origin if spec.has_location else None


def import_plugin(module: str) -> None:
    """Import a plugin; an error inside it is one line (the traceback with --debug)."""
    from ..errors import GradfilterError

    try:
        importlib.import_module(module)
    except Exception as exc:
        raise GradfilterError(f"--plugin {module}: importing it failed: "
                              f"{type(exc).__name__}: {exc}") from exc
