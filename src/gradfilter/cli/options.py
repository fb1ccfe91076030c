"""Options the commands share, and reading DATA as they name it (no torch here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args

import click

from ..clusters import CLUSTER_FEATURES, DEFAULT_FEATURES
from ..config import (
    METHODS,
    CollectChoice,
    DeviceChoice,
    DtypeChoice,
    ScoreConfig,
    TemplateChoice,
    TruncationChoice,
    TurnsChoice,
)
from ..data.conversations import FORMATS
from ..data.schemas import SCHEMAS
from ..data.sources import CONTAINERS
from ..diversity import DEFAULT_THRESHOLD, DIVERSITY
from ..errors import GradfilterError
from ..strata import ALLOCATIONS, WITHIN
from ..threads import available_cores
from ..utilities import (
    BASELINE_SCORES,
    DEFAULT_UNGATED,
    DEFAULT_UTILITY,
    DIRECTIONS,
    RANKINGS,
    RDS_SCORES,
)

DEFAULTS = ScoreConfig()


def _apply(command: Callable, options: list[Callable]) -> Callable:
    for option in reversed(options):
        command = option(command)
    return command


split_option = click.option(
    "--split", default=None,
    help="Split of a Hugging Face DatasetDict or hub dataset (default: train).")
out_format_option = click.option(
    "--out-format", type=click.Choice(CONTAINERS), default=None,
    help="Container of the subset: json (an array), jsonl, parquet or hf (a save_to_disk "
         "directory). Default: what --out's extension names (.json, .jsonl, .parquet, .gz "
         "after a JSON one), else the input's; an extension that says otherwise is refused.")
skip_option = click.option(
    "--skip-bad-records", is_flag=True,
    help="Keep records that cannot be read or fail validation (a malformed JSONL line, a "
         "missing field) as unscored rows in their place (listed in the run record) instead "
         "of stopping.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
allow_mismatch_option = click.option(
    "--allow-data-mismatch", is_flag=True,
    help="Use a statistics table even where the data differs from the data it was scored on "
         "(records edited, added, removed or reordered on purpose); the mismatch is shown "
         "and recorded in the run record. Without it such a table is refused.")

# Outputs keep the user's spelling (a trailing '/' says "a directory"); paths.writes checks it.
OUT_HELP = ("A symbolic link is followed (its target is replaced, the link kept); a device, FIFO "
            "or socket there is refused, as is - (standard output).")
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="CPU threads for torch (default: OMP_NUM_THREADS where set, as torchrun sets it, "
         f"else the cores this process may use, {available_cores()} here); recorded in the "
         "run record, never part of the "
         "settings that name a stored table. Fewer than the cores when other work holds "
         "some (docs/performance.md).")


def baseline_help(names: tuple[str, ...] = (*BASELINE_SCORES, "loss")) -> str:
    """Each baseline with the direction it ranks in, for --help."""
    return "; ".join(f"{name}: {DIRECTIONS[name]}" for name in names)


def data_options(command: Callable) -> Callable:
    """How DATA is read: format override, key-name mapping, split, first N records."""
    return _apply(command, [
        click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                     help="Override the detected format."),
        click.option("--fields", default=None,
                     help="Map key names onto the format, e.g. instruction=question,"
                          "output=answer."),
        click.option("--limit", type=int, default=None, help="Use only the first N records."),
        split_option,
    ])


def select_options(command: Callable) -> Callable:
    return _apply(command, [
        click.option("--ratio", type=float, default=None, help="Fraction of records to keep."),
        click.option("--count", type=int, default=None, help="Number of records to keep."),
        click.option("--utility", type=click.Choice(RANKINGS),
                     default=None,
                     help=f"What to rank by (default: the baseline that made the table, else "
                          f"{DEFAULT_UTILITY}, or {DEFAULT_UNGATED} where the table has no IFD "
                          "ratios, or align (rds for an IFD table) where it was scored with "
                          "--target-examples; the align and rds utilities need such a table). "
                          "Utilities: highest first (loss: lowest loss first); "
                          "baselines: " + baseline_help((*BASELINE_SCORES, *RDS_SCORES)) + "."),
        click.option("--order", type=click.Choice(["input", "score"]), default="input",
                     show_default=True),
        click.option("--score-field", default=None, help="Add the score to each kept record."),
        click.option("--out-schema", type=click.Choice(SCHEMAS), default="native",
                     show_default=True,
                     help="native: the records as they are; messages: {messages: [{role, "
                          "content}]} with roles system/user/assistant, as scored (OpenAI, "
                          "TRL's conversational form); prompt-completion: TRL's standard "
                          "{prompt, completion} strings (one answer per record)."),
        click.option("--rejected", type=click.Path(path_type=Path), default=None,
                     help="Also write the records not kept, unchanged (container by "
                          "extension, else the input's)."),
        click.option("--annotate", type=click.Path(path_type=Path), default=None,
                     help="Also write every record with its decision under a 'gradfilter' "
                          "key: index, selected, rank, score, utility and the reason (selected, "
                          "below the cut, near-duplicate, not taken in its stratum, gated out: "
                          "IFD >= 1, unscorable: why...)."),
        click.option("--diversity", type=click.Choice(DIVERSITY), default="none",
                     show_default=True,
                     help="dedup: going down the ranking, drop a record whose gradient sketch "
                          "is a near-duplicate of one kept already (needs sketches)."),
        click.option("--diversity-threshold", type=float, default=DEFAULT_THRESHOLD,
                     show_default=True,
                     help="Cosine similarity (mean over members, late-epoch sketches) at or "
                          "above which dedup drops a record; 1 keeps plain top-k, lower drops "
                          "more."),
        *stratify_options,
    ])


stratify_options = [
    click.option("--threshold", type=float, default=None,
                 help="Keep only records whose score is at or above this (in the utility's "
                      "units; the run record's cut_score is a run's lowest kept score): all "
                      "of them, or with --ratio/--count the top of them up to that budget."),
    click.option("--stratify", default=None, metavar="FIELD|length[:B]|clusters[:K]",
                 help="Spread the budget over strata and take the best within each: FIELD "
                      "(or field:FIELD), a top-level field of the records (source, language); "
                      "length[:B], B bins (default 4) of response tokens cut at the pool's "
                      "quantiles; clusters[:K], k-means over the ensemble's training "
                      "trajectories (K by a rule when not given; docs/method.md)."),
    click.option("--allocate", type=click.Choice(ALLOCATIONS), default=None,
                 help="How --stratify spreads the budget: even (S2L: strata smaller than "
                      "their share taken whole, the rest shared evenly; the default for "
                      "clusters) or proportional (the pool's shares; the default otherwise)."),
    click.option("--within", type=click.Choice(WITHIN), default=None,
                 help="Within a stratum: utility (highest score first, the default) or "
                      "random (a draw seeded by --seed; with clusters, this is S2L)."),
    click.option("--cluster-features", type=click.Choice(CLUSTER_FEATURES), default=None,
                 help=f"What --stratify clusters clusters on (default {DEFAULT_FEATURES}: "
                      "each member's loss and log gradient norm at each recorded epoch, "
                      "standardised; loss: the losses alone, as S2L; trajectory+sketch: "
                      "also the late gradient sketches, projected)."),
]


def report_options(command: Callable) -> Callable:
    """Where the selection's report page goes (`report_target`)."""
    return _apply(command, [
        click.option("--report", "report", type=click.Path(), default=None,
                     help="The report page (HTML) of the selection (default: report.html "
                          "beside the subset; replaces only an earlier report)."),
        click.option("--no-report", is_flag=True, help="Write no report page."),
    ])


def report_target(out: str | Path, report: str | Path | None, no_report: bool) -> Path | None:
    """The report page's path: as named (refused as `paths.writes` refuses a file output
    spelled '-' or ending in '/'), else report.html beside the subset (a Hugging Face dataset
    directory gets it beside, not inside), None with --no-report."""
    if no_report:
        if report is not None:
            raise GradfilterError("give --report PATH or --no-report, not both")
        return None
    from ..paths import writes
    from ..report import REPORT_NAME

    if report is not None:
        writes("the report", "--report", report, run_record=False)
        return Path(report)
    return Path(out).parent / REPORT_NAME


def report_outputs(path: str | Path | None, option: str = "--report") -> list:
    """The report page as an output for `refuse_collisions`, checked first: a file there must
    be an earlier report of ours. `option`: how the user named it ("default --report" where
    they did not)."""
    from ..paths import writes
    from ..report.page import check_report_path

    if path is None:
        return []
    check_report_path(path, f"the report ({option} {path})")
    return writes("the report", option, path, run_record=False)


class BatchTokens(click.ParamType):
    """`auto` (None: chosen from the device and the proxy) or a positive integer."""

    name = "auto|INTEGER"

    def convert(self, value: Any, param, ctx) -> int | None:
        if value is None or value == "auto":
            return None
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if number < 1:
            self.fail(f"must be auto or a positive integer, got {value!r}", param, ctx)
        return number


def _default(name: str, **kwargs: Any) -> Callable:
    """An option whose default is ScoreConfig's field of the same name."""
    field = name.lstrip("-").replace("-", "_")
    return click.option(name, default=getattr(DEFAULTS, field), show_default=True, **kwargs)


def _score_option_table() -> dict[str, Callable]:
    """The options of `score` and `run` by parameter name."""
    return {
        "method": click.option(
            "--method", type=click.Choice(METHODS), default="gsnr", show_default=True,
            help="gsnr (the LoRA ensemble) or a baseline: " + baseline_help() + "."),
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
        "truncation": _default(
            "--truncation", type=click.Choice(get_args(TruncationChoice)),
            help="A record longer than --max-length: keep (scored on its first --max-length "
                 "tokens) or drop (left unscored, with that reason). The summary and the run "
                 "record say how many records and response tokens it hides."),
        "batch_tokens": click.option(
            "--batch-tokens", type=BatchTokens(), default="auto", show_default=True,
            help="Padded tokens per micro-batch, all members' rows together (auto: from the "
                 "device and the proxy, see docs/performance.md). Training still steps once "
                 "per --batch-size examples per member (gradients accumulate); changes no "
                 "number beyond float rounding."),
        "grad_clip": _default("--grad-clip", type=float),
        "seed": _default("--seed", type=int),
        "device": _default("--device", type=click.Choice(get_args(DeviceChoice))),
        "dtype": _default("--dtype", type=click.Choice(get_args(DtypeChoice))),
        "template": _default("--template", type=click.Choice(get_args(TemplateChoice))),
        "turns": _default("--turns", type=click.Choice(get_args(TurnsChoice)),
                          help="Which assistant turns carry loss."),
        "length_bucketing": click.option(
            "--bucket/--no-bucket", "length_bucketing", default=DEFAULTS.length_bucketing,
            show_default=True,
            help="Batch examples of similar length together (changes the scores)."),
        "collect": _default(
            "--collect", type=click.Choice(get_args(CollectChoice)),
            help="during: each example's loss and gradient norm from the training passes of "
                 "epochs s and t themselves (no extra pass, T epochs of cost); snapshot: a "
                 "separate pass over the adapters after epochs s and t (T + 2). Changes the "
                 "scores."),
        "sketch_dim": _default(
            "--sketch-dim", type=int,
            help="Size of each example's gradient sketch per member and collected epoch "
                 "(stored in the table, used by select --diversity); 0 turns it off."),
        "ifd_pass": click.option(
            "--ifd-pass/--no-ifd-pass", "ifd_pass", default=DEFAULTS.ifd_pass,
            show_default=True,
            help="Also measure every record's IFD ratio with the untrained proxy (two forward "
                 "passes before training), for the gated utilities (<utility>-gated)."),
        "target_examples": click.option(
            "--target-examples", type=click.Path(path_type=Path), default=None,
            help="Examples of the task to select for (any input format; the pool's template "
                 "and masks). --method gsnr (needs --sketch-dim): one extra gradient pass "
                 "over them gives every record's alignment with them, and the utilities align "
                 "(the default then), align-snr and align-max (docs/method.md §4). --method "
                 "ifd: RDS+, the cosines of the proxy's pooled hidden states, from IFD's own "
                 "forward plus one over them: rds (the default then) and rds-mean (§6)."),
        "save_adapters": click.option(
            "--save-adapters", type=click.Path(path_type=Path), default=None,
            help="Write every member's PEFT adapter at each collected epoch here."),
        "checkpoint_dir": click.option(
            "--checkpoint-dir", type=click.Path(path_type=Path), default=None,
            help="Commit the run's state here as it goes; rerunning with the same settings "
                 "continues from the last commit (kept after the end)."),
        "member_groups": click.option(
            "--member-groups", type=click.IntRange(min=1), default=None,
            help="Under torchrun: the member groups the processes form (default: the smaller "
                 "of --members and the number of processes); each group's processes split its "
                 "members' batches (docs/method.md, 'Several processes'). Changes no number "
                 "beyond float rounding."),
        "checkpoint_every": click.option(
            "--checkpoint-every", type=click.IntRange(min=1), default=50, show_default=True,
            help="Commit every N optimiser steps (and N collection batches)."),
        "threads": threads_option,
        "quiet": quiet_option,
    }


def score_options(*exclude: str) -> Callable[[Callable], Callable]:
    """Add the scoring options (method.md §2) to a command, except those named."""
    return lambda command: _apply(
        command, [option for name, option in _score_option_table().items()
                  if name not in exclude])


def config_from(options: dict[str, Any]) -> ScoreConfig:
    """The ScoreConfig that a command's options describe (other options are ignored)."""
    names = {f.name for f in fields(ScoreConfig)}
    values = {k: v for k, v in options.items() if k in names}
    if values.get("lora_targets"):
        values["lora_targets"] = tuple(t.strip() for t in values["lora_targets"].split(","))
    return ScoreConfig(**values)


def read_data(data: str, fmt, fields, limit, split=None, skip_bad_records: bool = False):
    """DATA as the data options name it, read into memory."""
    from ..data.conversations import parse_fields
    from ..data.dataset import read_dataset

    return read_dataset(data, fmt, limit, parse_fields(fields), split=split,
                        skip_bad_records=skip_bad_records)


def csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def csv_numbers(text: str, option: str, cast: Callable[[str], Any] = float) -> list:
    try:
        return [cast(part) for part in csv_list(text)]
    except ValueError:
        raise GradfilterError(f"{option} must be comma-separated numbers, got {text!r}") from None


def named_paths(specs: tuple[str, ...], option: str) -> dict[str, str]:
    """`NAME=PATH` option values as {name: path}."""
    named = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise GradfilterError(f"{option} must be NAME=PATH, got {spec!r}")
        named[name] = path
    return named
