"""The commands that load a model: score, run (score and select) and demo.

Torch and the model are imported when a command runs, not when this module loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np

from ..config import ScoreConfig
from ..demo import DEMO_RECORDS
from ..subset import Subset
from .options import (
    OUT_HELP,
    config_from,
    data_options,
    out_format_option,
    read_data,
    report_options,
    report_outputs,
    report_target,
    score_options,
    select_options,
    skip_option,
)
from .report import console, print_recoveries, print_selection


@click.command()
@click.argument("data")
@click.option("--out", type=click.Path(), required=True,
              help=f"Statistics table (Parquet). {OUT_HELP}")
@data_options
@skip_option
@score_options()
def score(data: str, out: str, fmt, fields, limit, split, skip_bad_records, method,
          save_adapters, checkpoint_dir, member_groups, checkpoint_every, target_examples,
          quiet, **options) -> None:
    """Score DATA (the LoRA ensemble, or a baseline) and write the statistics table.

    Under torchrun (e.g. `torchrun --nproc-per-node 4 -m gradfilter score ...`) the processes
    form member groups x data shards: they split the ensemble's members, then each member's
    batches; rank 0 writes the table.
    """
    from ..data.dataset import record_notes
    from ..paths import refuse_collisions, score_paths
    from ..scoring.distributed import is_main_process
    from ..scoring.score import score as run_score
    from ..table import table_meta
    from ..threads import use_threads

    refuse_collisions(*score_paths(data, out, options["proxy"], checkpoint_dir=checkpoint_dir,
                                   save_adapters=save_adapters,
                                   target_examples=target_examples))
    use_threads(options.pop("threads"))
    dataset = read_data(data, fmt, fields, limit, split, skip_bad_records)
    table = run_score(dataset, Path(out), config_from(options), method=method,
                      save_adapters=save_adapters, skip_bad_records=skip_bad_records,
                      progress=not quiet, checkpoint_dir=checkpoint_dir,
                      checkpoint_every=checkpoint_every, member_groups=member_groups,
                      target_examples=target_examples)
    if not is_main_process():
        return
    unscored = sum(reason is not None for reason in table.column("skip_reason").to_pylist())
    console.print(f"statistics table: {out} ({table.num_rows} records, {unscored} unscored: "
                  "reasons in the table's skip_reason and the run record)")
    print_recoveries(dataset.report, {**record_notes(dataset),
                                      "truncation": table_meta(table).get("truncation")})


@click.command()
@click.argument("data")
@click.option("--out", type=click.Path(), required=True,
              help=f"Subset file (a directory for --out-format hf). {OUT_HELP}")
@click.option("--stats", type=click.Path(path_type=Path), default=None,
              help="Statistics table (default: <out>.stats.parquet).")
@data_options
@out_format_option
@select_options
@report_options
@skip_option
@score_options()
def run(data: str, out: str, stats: Path | None, fmt, fields, limit, split, out_format,
        skip_bad_records, method, save_adapters, checkpoint_dir, member_groups, checkpoint_every,
        target_examples, quiet, ratio, count, utility, order, score_field, out_schema,
        rejected, annotate, diversity, diversity_threshold, threshold, stratify, allocate,
        within, cluster_features, report, no_report, **options) -> None:
    """Score DATA and write the selected subset in one go (default --ratio 0.1, unless
    --threshold alone), and the selection's report page (report.html beside the subset)."""
    from ..paths import refuse_collisions, run_paths
    from ..strata import check_options, refuse_before_scoring
    from ..threads import use_threads

    page = report_target(out, report, no_report)
    inputs, outputs = run_paths(data, out, stats, options["proxy"],
                                checkpoint_dir=checkpoint_dir, save_adapters=save_adapters,
                                out_format=out_format, rejected=rejected, annotate=annotate,
                                target_examples=target_examples)
    refuse_collisions(inputs, [*outputs, *report_outputs(
        page, "--report" if report else "default --report")])
    spec = check_options(stratify, allocate, within, cluster_features, threshold, diversity)
    use_threads(options.pop("threads"))
    if ratio is None and count is None and threshold is None:
        ratio = 0.1
    dataset = read_data(data, fmt, fields, limit, split, skip_bad_records)
    refuse_before_scoring(spec, method, dataset.records, data)
    score_and_select(dataset, Path(out), stats, config_from(options),
                     dict(method=method, save_adapters=save_adapters,
                          skip_bad_records=skip_bad_records, progress=not quiet,
                          checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                          member_groups=member_groups, target_examples=target_examples),
                     dict(ratio=ratio, count=count, utility=utility, order=order,
                          score_field=score_field, out_format=out_format, out_schema=out_schema,
                          rejected=rejected, annotate=annotate, diversity=diversity,
                          diversity_threshold=diversity_threshold, threshold=threshold,
                          stratify=stratify, allocate=allocate, within=within,
                          cluster_features=cluster_features, seed=options["seed"]),
                     report=page)


def score_and_select(dataset, out: Path, stats: Path | None, config: ScoreConfig, how: dict,
                     choice: dict, tags: Sequence[str | None] | None = None,
                     report: Path | None = None, labels: Path | None = None) -> Subset | None:
    """Score `dataset` into `stats`, select from the table, write the report page (where
    `report` names one, with the `labels` file's tags), print the summary; the subset (None on
    ranks other than 0)."""
    from ..data.dataset import record_notes
    from ..paths import default_stats
    from ..scoring.distributed import is_main_process
    from ..scoring.score import score as run_score
    from ..subset import select as select_subset
    from ..table import table_meta

    stats = stats or default_stats(out)
    table = run_score(dataset, stats, config, **how)
    if not is_main_process():
        return None
    subset = select_subset(dataset, stats, out, **choice)  # by path: the run record names it
    if report is not None:
        write_run_report(dataset, stats, out, report, labels)
    print_selection(subset, out, stats, {**record_notes(dataset),
                                         "truncation": table_meta(table).get("truncation")}, tags,
                    report=report)
    return subset


def write_run_report(dataset, stats: Path, out: Path, report: Path,
                     labels: Path | None = None) -> Path:
    """The report page of a run's selection, from the files it wrote and the data as it was
    read (its path, format, key mapping, split and record count, not its records)."""
    from ..report.selection import SelectionSources
    from ..report.selection_page import write_selection_report

    split = dataset.source.split if dataset.source is not None else None
    return write_selection_report(SelectionSources(
        stats, str(dataset.path), subset=out, labels=labels, fmt=dataset.format,
        fields=dataset.fields, split=split, limit=len(dataset.records)), report)


@click.command()
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("gradfilter-demo"),
              show_default=True)
@click.option("--records", type=click.IntRange(min=10), default=DEMO_RECORDS,
              show_default=True)
@click.option("--quiet", is_flag=True)
@click.option("--no-report", is_flag=True, help="Write no report page (OUT_DIR/report.html).")
def demo(out_dir: Path, records: int, quiet: bool, no_report: bool) -> None:
    """Run the whole pipeline offline on the embedded default: ShareGPT conversations' opening
    exchanges, 20% of them corrupted on purpose, scored with SmolLM2-135M; the subset, what
    it kept of them, and the report page to open (OUT_DIR/report.html)."""
    from ..bench.noise import write_labels, write_messages
    from ..data.exchanges import ExchangeReport
    from ..demo import (
        demo_config,
        demo_data,
        demo_exchanges,
        evidence,
        mix_in_corruptions,
        refuse_foreign_files,
        superfiltering_evidence,
    )
    from ..paths import refuse_collisions, run_paths
    from ..scoring.proxy import load_tokenizer

    source, config = demo_data(), demo_config()
    data = out_dir / "data.jsonl"
    page = report_target(out_dir / "subset.jsonl", None, no_report)
    inputs, outputs = run_paths(source, out_dir / "subset.jsonl", out_dir / "stats.parquet",
                                config.proxy, out_option="--out-dir", stats_option="--out-dir")
    refuse_collisions(inputs, [*outputs, *report_outputs(page, "--out-dir")])
    tokenizer = load_tokenizer(config.proxy)
    read = ExchangeReport()
    mixed, labels = mix_in_corruptions(demo_exchanges(tokenizer, records, report=read),
                                       tokenizer)
    refuse_foreign_files(out_dir, mixed, labels)
    for line in read.lines():
        console.print(f"note: {line}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_messages(data, mixed)
    write_labels(out_dir / "labels.parquet", np.arange(len(mixed)), labels)
    console.print(f"demo: the first {records} conversation openings (first prompt and its "
                  f"answer) of {source} that fit "
                  f"{config.max_length} tokens, {sum(map(bool, labels))} of their answers "
                  f"corrupted on purpose ({data}, labels.parquet)\n      proxy {config.proxy}")
    subset = score_and_select(read_data(str(data), None, None, None), out_dir / "subset.jsonl",
                              out_dir / "stats.parquet", config, dict(progress=not quiet),
                              dict(ratio=0.25), tags=labels, report=page,
                              labels=out_dir / "labels.parquet")
    if subset is not None:
        print(evidence(subset.scores, subset.indices, labels).line())  # the result: stdout
        baseline = superfiltering_evidence(out_dir / "stats.parquet", len(subset.indices), labels)
        if baseline is not None:
            print(baseline.baseline_line("IFD (Superfiltering's score, from this run's table)"))
        if page is not None:
            print(f"the page to open: {page} (what was kept and dropped, and why)")
