"""Scoring human ratings: un-blind the raters' files with the key, then the same statistics and
results format as the judge benchmark (`pairwise.py`, `pairwise_report.py`).

Per pair, per test set and pooled: win / tie / lose and the winning score with its 95%
bootstrap interval over prompts, by majority vote (the human verdict) and per rater; agreement
between raters (Fleiss' kappa, the share of unanimous items); and, where a `bench judge` run
compared the same answers, agreement of the humans with the judge (Cohen's kappa, confusion
table). Writes results.json, results.md and results.html. No torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import GradfilterError
from ..outputs import atomic_write_text, write_run_record
from .answers import read_answers
from .human import read_key, read_ratings, sha256_text, unblind
from .pairwise import annotator_agreement, finite, flipped, majority, rater_agreement, summarize
from .pairwise_report import human_report, item_numbers

Log = Callable[[str], object]
Item = tuple[str, str, str]  # (model A, model B, prompt id): one item, whichever sheet
PerRater = dict[Item, dict[str, str]]  # item -> rater -> A's outcome (or the rater's note)


def _rater_outcomes(key: dict[str, Any], ratings: dict[str, dict[str, Any]]
                    ) -> tuple[PerRater, PerRater, list[dict[str, Any]]]:
    """({(a, b, prompt id): {rater: A's outcome}}, the same for notes, one summary per
    sheet with the numbers of its unrated items)."""
    outcomes: PerRater = {}
    notes: PerRater = {}
    sheets = []
    for sheet in key["sheets"]:
        given = ratings.get(sheet["sheet"])
        unrated = []
        for item in sheet["items"]:
            entry = given["items"].get(item["item"], {}) if given else {}
            where = (item["a"], item["b"], item["prompt_id"])
            outcome = unblind(item, entry.get("choice"))
            outcomes.setdefault(where, {})[sheet["rater"]] = outcome
            if entry.get("note"):
                notes.setdefault(where, {})[sheet["rater"]] = entry["note"]
            if outcome == "unrated":
                unrated.append(item["number"])
        sheets.append({"rater": sheet["rater"], "sheet": sheet["sheet"],
                       "sheet_file": sheet["file"], "given": given is not None,
                       "ratings_file": given["file"] if given else None,
                       "items": len(sheet["items"]), "unrated": unrated})
    return outcomes, notes, sheets


def _judge_outcomes(key: dict[str, Any], judge_dir: Path | None
                    ) -> tuple[dict[Item, str], dict[tuple[str, str], str]]:
    """({(a, b, prompt id): A's outcome by the judge}, {(a, b): judge model}) for the key's
    pairs that the judge run compared, in either order. The judge's answers must be the ones
    the sheets showed."""
    if judge_dir is None:
        return {}, {}
    path = Path(judge_dir) / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        judge_model = results["judge"]["model"]
        pairs = {(p["a"], p["b"]): p["verdicts"] for p in results["pairs"]}
    except FileNotFoundError:
        raise GradfilterError(f"{path}: no such file (--judge names a `bench judge` output "
                              "directory)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise GradfilterError(f"{path}: not the results of `bench judge`") from None
    _check_same_answers(key, Path(judge_dir))
    outcomes: dict[Item, str] = {}
    models: dict[tuple[str, str], str] = {}
    for a, b in map(tuple, key["pairs"]):
        verdicts, turn = pairs.get((a, b)), lambda o: o
        if verdicts is None and (b, a) in pairs:
            verdicts, turn = pairs[(b, a)], flipped
        if verdicts is None:
            continue
        models[(a, b)] = judge_model
        for verdict in verdicts:
            outcomes[(a, b, verdict["prompt_id"])] = turn(verdict["outcome"])
    return outcomes, models


def _check_same_answers(key: dict[str, Any], judge_dir: Path) -> None:
    """The judge run's answers files (where it kept them) hold the prompts and answers the
    sheets showed; else its verdicts are about other answers."""
    prompts = {p["id"]: p["sha256"] for p in key["prompts"]}
    for model, hashes in key["answers_sha256"].items():
        path = judge_dir / f"answers-{model}.jsonl"
        if not path.is_file():
            continue
        for prompt, answer in read_answers(path):
            if prompt.id in hashes and (sha256_text(answer) != hashes[prompt.id]
                                        or sha256_text(prompt.text) != prompts[prompt.id]):
                raise GradfilterError(
                    f"{path}: {prompt.id}: not the prompt and answer the sheets showed for "
                    f"{model}: the judge run compared other answers (--judge another run)")


def _pair_results(a: str, b: str, key: dict[str, Any], outcomes: PerRater, notes: PerRater,
                  judge: dict[Item, str], judge_model: str | None, judge_dir: Path | None,
                  raters: list[str], seed: int) -> dict[str, Any]:
    """One pair's verdicts (majority, each rater's, the judge's, notes), summaries and
    agreement."""
    test_sets = list(key["test_sets"])
    verdicts = []
    for prompt in key["prompts"]:
        where = (a, b, prompt["id"])
        votes = {rater: outcomes[where][rater] for rater in raters}
        verdict = {"prompt_id": prompt["id"], "test_set": prompt["test_set"],
                   "ratings": votes, "outcome": majority(list(votes.values()))}
        if judge_model is not None:
            verdict["judge"] = judge.get(where, "unjudged")
        if where in notes:
            verdict["notes"] = notes[where]
        verdicts.append(verdict)

    def summaries(outcome_of: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
        per_set = {name: summarize([outcome_of(v) for v in verdicts if v["test_set"] == name],
                                   seed, missing="unrated") for name in test_sets}
        return {"test_sets": per_set,
                "pooled": summarize([outcome_of(v) for v in verdicts], seed, missing="unrated")}

    result = {"a": a, "b": b, **summaries(lambda v: v["outcome"]),
              "raters": {r: summaries(lambda v, r=r: v["ratings"][r]) for r in raters},
              "agreement": rater_agreement([[v["ratings"][r] for r in raters]
                                            for v in verdicts], seed)}
    if judge_model is not None:
        by_judge = [v["judge"] for v in verdicts]
        result["judge"] = {
            "model": judge_model, "results": str(Path(judge_dir) / "results.json"),
            "majority": annotator_agreement([v["outcome"] for v in verdicts], by_judge, seed),
            "raters": {r: annotator_agreement([v["ratings"][r] for v in verdicts], by_judge,
                                              seed) for r in raters}}
    return {**result, "verdicts": verdicts}


def score_ratings(key_path: Path, ratings_paths: Sequence[Path], out_dir: Path, *,
                  judge_dir: Path | None = None, seed: int = 0,
                  log: Log = print) -> dict[str, Any]:
    """Un-blind the ratings, summarize, write results.json, results.md, results.html (and the
    run record); return the results. `judge_dir`: a `bench judge` output directory for the same
    answers (default: the one the sheets were exported from, if it is still there)."""
    key = read_key(key_path)
    ratings = read_ratings(key, key_path, ratings_paths)
    if judge_dir is None and key.get("judge") and (Path(key["judge"]) / "results.json").is_file():
        judge_dir = Path(key["judge"])
    outcomes, notes, sheets = _rater_outcomes(key, ratings)
    for sheet in sheets:
        if sheet["unrated"]:
            log(f"{sheet['rater']} ({sheet['sheet_file']}): {len(sheet['unrated'])} of "
                f"{sheet['items']} items unrated"
                + ("" if sheet["given"] else " (no ratings file given)") + ": "
                + item_numbers(sheet["unrated"]))
    raters = [s["rater"] for s in sheets if s["given"]]
    judge, judge_models = _judge_outcomes(key, judge_dir)
    results = {
        "benchmark": "human", "key": str(key_path), "seed": seed,
        "models": key["models"], "export_seed": key["seed"],
        "test_sets": {name: {"prompts": n} for name, n in key["test_sets"].items()},
        "raters": sheets,
        "pairs": [_pair_results(a, b, key, outcomes, notes, judge, judge_models.get((a, b)),
                                judge_dir, raters, seed) for a, b in key["pairs"]],
    }
    write_human_results(Path(out_dir), results)
    log(f"human ratings: {len(raters)} raters; results in {Path(out_dir) / 'results.md'}")
    return results


def write_human_results(out_dir: Path, results: dict[str, Any]) -> None:
    report = human_report(finite(results))
    atomic_write_text(out_dir / "results.json",
                      json.dumps(finite(results), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / "results.md", report.markdown())
    atomic_write_text(out_dir / "results.html", report.html("Human pairwise ratings"))
    write_run_record(out_dir / "results.json", {
        "stage": "bench human score", "seed": results["seed"], "key": results["key"],
        "ratings": [r["ratings_file"] for r in results["raters"]],
        "judge": sorted({p["judge"]["results"] for p in results["pairs"] if "judge" in p})})
