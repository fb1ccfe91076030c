"""`gradfilter bench human`: blind rating sheets out (export), the raters' files in (score).

No torch: both commands read and write files only.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from .options import named_paths
from .report import console


@click.group()
def human() -> None:
    """Human pairwise ratings: blind sheets for raters, then their verdict and agreement."""


@human.command("export")
@click.option("--from-judge", "judge_dir", type=click.Path(path_type=Path), default=None,
              help="A `bench judge` output directory: its models' answers and the pairs it "
                   "compared.")
@click.option("--answers", "answer_specs", multiple=True, metavar="NAME=FILE",
              help="A model's answers file ({id, test_set, prompt, answer} per line, as "
                   "`bench judge` writes answers-NAME.jsonl); repeat for two or more models.")
@click.option("--model", "model_specs", multiple=True, metavar="NAME=PATH",
              help="Generate the answers here instead (no judge needed): a fine-tuned target "
                   "(a PEFT adapter directory from bench finetune, or a model path); two or "
                   "more, with --prompts.")
@click.option("--prompts", "prompt_paths", multiple=True, type=click.Path(path_type=Path),
              help="With --model: a prompts file (JSONL), or a directory holding the five test "
                   "sets; repeatable.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="A new directory: sheets/rater-K.html for the raters; key.json (and "
                   "generated answers) for you only.")
@click.option("--per-set", type=int, default=None,
              help="The first N prompts of each test set (Cherry LLM's protocol: 20; default: "
                   "all).")
@click.option("--raters", type=int, default=3, show_default=True, help="Sheets to write.")
@click.option("--pairs", type=click.Choice(["all", "first"]), default=None,
              help="Every pair of models, or the first against each of the others (default: "
                   "the judge run's pairs, else all).")
@click.option("--seed", type=int, default=None,
              help="Draws each sheet's item order and which half shows which model first "
                   "(default: a fresh random seed; recorded in the key).")
@click.option("--max-new-tokens", type=int, default=256, show_default=True,
              help="With --model: as bench judge.")
@click.option("--batch-size", type=int, default=8, show_default=True,
              help="With --model: as bench judge.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="With --model: as bench judge.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="With --model: the answers cache (e.g. a judge run's OUT/cache); an "
                   "interrupted export resumes from it.")
def export(judge_dir: Path | None, answer_specs: tuple[str, ...], model_specs: tuple[str, ...],
           prompt_paths: tuple[Path, ...], out_dir: Path, per_set: int | None, raters: int,
           pairs: str | None, seed: int | None, **generation) -> None:
    """Write one blind rating sheet (a self-contained HTML page) per rater, and the key.

    Each item shows a prompt and two models' answers as "Answer 1" and "Answer 2"; each model
    is shown first in half of the items. Raters open the page in a browser (no network
    needed), rate with buttons or keys 1 / T / 2, and send back the file that its download
    button saves. Hand out only OUT/sheets; keep key.json: `bench human score` needs it.
    """
    from ..bench.human import (
        answers_from_files,
        answers_from_judge,
        answers_from_models,
        check_export,
        export_sheets,
    )
    from ..bench.prompts import default_prompt_files
    from ..errors import GradfilterError

    if sum(map(bool, (judge_dir, answer_specs, model_specs))) != 1:
        raise GradfilterError("give one of --from-judge DIR, --answers NAME=FILE (two or "
                              "more) or --model NAME=PATH (two or more, with --prompts)")
    if bool(model_specs) != bool(prompt_paths):
        raise GradfilterError("--prompts goes with --model (the prompts to answer)")
    files = {name: Path(path) for name, path in named_paths(answer_specs, "--answers").items()}
    models = named_paths(model_specs, "--model")
    _refuse_export_collisions(judge_dir, files, models, prompt_paths, out_dir,
                              generation["cache_dir"])
    check_export(out_dir, raters)
    if judge_dir is not None:
        answers = answers_from_judge(judge_dir, pairs)  # type: ignore[arg-type]
    elif files:
        answers = answers_from_files(files, pairs or "all")  # type: ignore[arg-type]
    else:
        prompt_files = [f for p in prompt_paths
                        for f in (default_prompt_files(p) if p.is_dir() else [p])]
        answers = answers_from_models(models, prompt_files, per_set=per_set,
                                      pairs=pairs or "all",  # type: ignore[arg-type]
                                      log=console.print, **generation)
    export_sheets(answers, out_dir, raters=raters, per_set=per_set, seed=seed,
                  log=console.print)


def _refuse_export_collisions(judge_dir: Path | None, files: dict[str, Path],
                              models: dict[str, str], prompt_paths: tuple[Path, ...],
                              out_dir: Path, cache_dir: Path | None) -> None:
    from ..paths import named, reads, refuse_collisions

    cache = [named("the answers cache", "--cache-dir", cache_dir, "dir")] if cache_dir else []
    refuse_collisions(
        [*reads("the judge run", "--from-judge", judge_dir),
         *(n for name, path in files.items()
           for n in reads(f"the answers of {name}", "--answers", path)),
         *(n for name, path in models.items()
           for n in reads(f"the model {name}", "--model", path)),
         *(n for path in prompt_paths for n in reads("the prompts", "--prompts", path))],
        [named("the sheets and key", "--out", out_dir, "dir"), *cache])


@human.command("score")
@click.argument("key", type=click.Path(path_type=Path))
@click.argument("ratings", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Where results.json, results.md and results.html go.")
@click.option("--judge", "judge_dir", type=click.Path(path_type=Path), default=None,
              help="A `bench judge` output directory for the same answers, to measure the "
                   "judge against the raters (default: the one the sheets came from, if it "
                   "is still there).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
def score(key: Path, ratings: tuple[Path, ...], out_dir: Path, judge_dir: Path | None,
          seed: int) -> None:
    """Un-blind the raters' files (RATINGS, one per sheet) with KEY and report the verdict:
    winning score by majority vote and per rater, per test set and pooled, with 95%
    intervals; agreement between raters, and with the judge."""
    from ..bench.human_score import score_ratings
    from ..bench.pairwise import finite
    from ..bench.pairwise_report import human_report
    from ..paths import reads, refuse_collisions, writes

    refuse_collisions(
        [*reads("the key", "KEY", key), *(n for p in ratings for n in reads("ratings",
                                                                            "RATINGS", p)),
         *reads("the judge run", "--judge", judge_dir)],
        [*writes("the results", "--out", out_dir / "results.json"),
         *writes("the report", "--out", out_dir / "results.md", run_record=False),
         *writes("the page", "--out", out_dir / "results.html", run_record=False)])
    results = score_ratings(key, list(ratings), out_dir, judge_dir=judge_dir, seed=seed,
                            log=console.print)
    Console(soft_wrap=True).print(human_report(finite(results)).markdown(), markup=False)
    console.print(f"results: {out_dir / 'results.md'}, {out_dir / 'results.json'}, "
                  f"{out_dir / 'results.html'}")
