"""Human pairwise ratings, as the paper and Cherry LLM ran them: blind sheets out, ratings in.

`export_sheets` takes two or more models' answers to the same prompts (a `bench judge` output
directory's `answers-<model>.jsonl`, such files given by name, or answers generated here from
the models, as `bench judge` generates them), keeps the first N prompts of each test set, and
writes one self-contained HTML sheet per rater plus the key that un-blinds them. Each item
shows a prompt and two answers labelled only "Answer 1" and "Answer 2". Per rater, drawn from
the recorded seed: the items' order, and which half of each pair's items shows the first model
first (the two halves differ by at most one item, in each test set and overall), so a rater's
position bias cancels in the winning score.

`read_key` and `read_ratings` read them back, refusing in one line ratings that do not belong
to the key; `unblind` turns a sheet's choices into model A's outcomes. The scoring lives in
`human_score.py`, the statistics in `pairwise.py`. Torch is imported only to generate answers.
"""

from __future__ import annotations

import hashlib
import html
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import GradfilterError
from ..outputs import atomic_dir, write_run_record
from ..report.page import stylesheet
from .answers import generate_answers, read_answers, write_answers
from .prompts import Prompt, load_prompts

Log = Callable[[str], object]

KEY_FORMAT = "gradfilter-human-key"
RATINGS_FORMAT = "gradfilter-human-ratings"
FORMAT_VERSION = 1
CHOICES = ("1", "tie", "2")
KEY_FILE = "key.json"
SHEETS_DIR = "sheets"


@dataclass(frozen=True)
class Answers:
    """Two or more models' answers to the same prompts, and the pairs to compare."""

    prompts: list[Prompt]
    answers: dict[str, dict[str, str]]  # model -> prompt id -> answer
    sources: dict[str, str]  # model -> the answers file, or the model it was generated with
    pairs: list[tuple[str, str]]
    judge_dir: Path | None = None
    generated: bool = False  # answered here: export writes them beside the key


def sha256_text(text: str) -> str:
    """What the key records of a prompt or an answer: enough to tell it is the same one."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# Reading the answers
# --------------------------------------------------------------------------------------------


def answers_from_files(files: dict[str, Path],
                       pairs: Literal["all", "first"] | list[tuple[str, str]] = "all",
                       judge_dir: Path | None = None) -> Answers:
    """Answers files (`{"id", "test_set", "prompt", "answer"}` per line, as `bench judge`
    writes them) by model name. Every file must hold the same prompts (ids and texts); the
    first file's order is the sheets' prompt order."""
    if len(files) < 2:
        raise GradfilterError("human ratings compare two or more models' answers; "
                              f"got {len(files)}")
    read = {name: read_answers(Path(path)) for name, path in files.items()}
    first_name, first_rows = next(iter(read.items()))
    prompts = [prompt for prompt, _ in first_rows]
    by_id = {p.id: p for p in prompts}
    for name, rows in read.items():
        ids = {prompt.id for prompt, _ in rows}
        missing = [p.id for p in prompts if p.id not in ids]
        extra = [prompt.id for prompt, _ in rows if prompt.id not in by_id]
        if missing or extra:
            raise GradfilterError(
                f"{files[name]}: not the prompts of {files[first_name]} ("
                + (f"{len(missing)} of them missing, e.g. {', '.join(missing[:3])}" if missing
                   else f"{len(extra)} others, e.g. {', '.join(extra[:3])}") + ")")
        for prompt, _ in rows:
            if (prompt.text, prompt.test_set) != (by_id[prompt.id].text,
                                                  by_id[prompt.id].test_set):
                raise GradfilterError(f"{files[name]}: prompt {prompt.id} differs from "
                                      f"{files[first_name]}'s")
    return Answers(prompts, {name: {p.id: a for p, a in rows} for name, rows in read.items()},
                   {name: str(path) for name, path in files.items()},
                   _pairs(list(files), pairs), judge_dir)


def _pairs(names: list[str], pairs: Literal["all", "first"] | list[tuple[str, str]]
           ) -> list[tuple[str, str]]:
    if not isinstance(pairs, str):
        return list(pairs)
    if pairs == "first":
        return [(names[0], other) for other in names[1:]]
    return list(combinations(names, 2))


def answers_from_judge(directory: Path, pairs: Literal["all", "first"] | None = None
                       ) -> Answers:
    """A `bench judge` output directory: its models' `answers-<name>.jsonl` and, unless
    `pairs` says otherwise, the pairs the judge compared."""
    directory = Path(directory)
    path = directory / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        models = list(results["models"])
        judged = [(pair["a"], pair["b"]) for pair in results["pairs"]]
    except FileNotFoundError:
        raise GradfilterError(f"{path}: no such file (is {directory} a `bench judge` "
                              "output directory?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise GradfilterError(f"{path}: not the results of `bench judge`") from None
    files = {name: directory / f"answers-{name}.jsonl" for name in models}
    return answers_from_files(files, pairs or judged, directory.resolve())


def answers_from_models(models: dict[str, str], prompt_files: Sequence[Path], *,
                        per_set: int | None, max_new_tokens: int = 256, batch_size: int = 8,
                        device: str = "auto", cache_dir: Path | None = None,
                        pairs: Literal["all", "first"] = "all", log: Log = print) -> Answers:
    """Generate the answers here, as `bench judge` does (greedy, cached in `cache_dir`, which
    may be a judge run's cache): the human route needs no judge. Torch is imported only to
    generate."""
    if len(models) < 2:
        raise GradfilterError("human ratings compare two or more models' answers; "
                              f"got {len(models)}")
    if per_set is not None and per_set < 1:
        raise GradfilterError(f"--per-set must be at least 1, got {per_set}")
    prompts = [p for path in prompt_files for p in load_prompts(Path(path), per_set)]
    if len({p.test_set for p in prompts}) != len(prompt_files):
        raise GradfilterError("two prompts files share a test set name: "
                              f"{', '.join(str(p) for p in prompt_files)}")
    answers = {name: dict(zip((p.id for p in prompts), generate_answers(
        path, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, device=device,
        cache_dir=cache_dir, log=log), strict=True)) for name, path in models.items()}
    return Answers(prompts, answers, dict(models), _pairs(list(models), pairs), generated=True)


def first_per_set(prompts: Sequence[Prompt], per_set: int | None) -> list[Prompt]:
    """The first `per_set` prompts of each test set, in their order (all of them: None)."""
    if per_set is None:
        return list(prompts)
    if per_set < 1:
        raise GradfilterError(f"--per-set must be at least 1, got {per_set}")
    taken: dict[str, int] = {}
    kept = []
    for prompt in prompts:
        if taken.get(prompt.test_set, 0) < per_set:
            taken[prompt.test_set] = taken.get(prompt.test_set, 0) + 1
            kept.append(prompt)
    return kept


# --------------------------------------------------------------------------------------------
# Blind sheets and their key
# --------------------------------------------------------------------------------------------


def counterbalanced(rng: np.random.Generator, prompts: Sequence[Prompt]) -> list[bool]:
    """Per prompt: is the pair's first model shown as Answer 1? A random half of each test set,
    and of all the prompts together (odd counts alternate, so neither half is ever more than
    one item larger)."""
    order = [k for name in dict.fromkeys(p.test_set for p in prompts)
             for k in rng.permutation([i for i, p in enumerate(prompts) if p.test_set == name])]
    offset = int(rng.integers(2))
    first = [False] * len(prompts)
    for position, k in enumerate(order):
        first[int(k)] = (position + offset) % 2 == 0
    return first


def _tokens(rng: np.random.Generator, count: int, nbytes: int) -> list[str]:
    """`count` distinct random hex tokens."""
    tokens: list[str] = []
    while len(tokens) < count:
        token = rng.bytes(nbytes).hex()
        if token not in tokens:
            tokens.append(token)
    return tokens


def build_sheet(answers: Answers, prompts: Sequence[Prompt], rater: int, seed: int
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the rater's page shows, the key's entry for it): the items of every pair in a
    shuffled order, each pair counterbalanced, ids drawn at random (they say nothing)."""
    rng = np.random.default_rng([seed, rater])
    [sheet_id] = _tokens(rng, 1, 6)
    items = [(a, b, prompt, shown_first)
             for a, b in answers.pairs
             for prompt, shown_first in zip(prompts, counterbalanced(rng, prompts), strict=True)]
    ids = _tokens(rng, len(items), 4)
    shown, keyed = [], []
    for number, k in enumerate(rng.permutation(len(items)), start=1):
        a, b, prompt, a_first = items[int(k)]
        one, two = (a, b) if a_first else (b, a)
        shown.append({"id": ids[number - 1], "prompt": prompt.text,
                      "answers": [answers.answers[one][prompt.id],
                                  answers.answers[two][prompt.id]]})
        keyed.append({"item": ids[number - 1], "number": number, "a": a, "b": b,
                      "prompt_id": prompt.id, "test_set": prompt.test_set, "answer_1": one})
    label = f"rater-{rater}"
    page = {"sheet": sheet_id, "rater": label, "title": f"Which answer is better? ({label})",
            "items": shown}
    return page, {"sheet": sheet_id, "rater": label, "file": f"{SHEETS_DIR}/{label}.html",
                  "items": keyed}


def render_sheet(page: dict[str, Any]) -> str:
    """The self-contained page: the template with the sheet's data inlined (`<` escaped, so
    no text can close the script element)."""
    template = resources.files("gradfilter.bench").joinpath("human_sheet.html").read_text(
        encoding="utf-8")
    data = json.dumps(page, ensure_ascii=False).replace("<", "\\u003c")
    return template.replace("{{STYLE}}", stylesheet()).replace(
        "{{TITLE}}", html.escape(page["title"])).replace("{{SHEET_JSON}}", data)


def check_export(out_dir: Path, raters: int) -> None:
    """Refuse before any work: a directory that holds something (a key of sheets already
    handed out must never be replaced), or no rater."""
    if raters < 1:
        raise GradfilterError(f"--raters must be at least 1, got {raters}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise GradfilterError(f"{out_dir}: exists and is not an empty directory; sheets and "
                              "their key go to a new one (a key of sheets already handed out "
                              "must not be replaced)")


def export_sheets(answers: Answers, out_dir: Path, *, raters: int = 3,
                  per_set: int | None = None, seed: int | None = None,
                  log: Log = print) -> dict[str, Any]:
    """Write `out_dir/sheets/rater-<k>.html` (k = 1..raters) and `out_dir/key.json` (with its
    run record), and answers generated here as `out_dir/answers-<model>.jsonl`; return the key.
    Only `sheets/` goes to the raters. `seed` None draws a fresh one (recorded in the key): the
    sheets then cannot be rebuilt by anyone who lacks the key."""
    out_dir = Path(out_dir)
    check_export(out_dir, raters)
    seed = secrets.randbits(63) if seed is None else seed
    prompts = first_per_set(answers.prompts, per_set)
    sheets = [build_sheet(answers, prompts, rater, seed) for rater in range(1, raters + 1)]
    key = {
        "format": KEY_FORMAT, "version": FORMAT_VERSION, "seed": seed, "per_set": per_set,
        "models": answers.sources,
        "judge": str(answers.judge_dir) if answers.judge_dir is not None else None,
        "pairs": [list(pair) for pair in answers.pairs],
        "test_sets": {name: sum(p.test_set == name for p in prompts)
                      for name in dict.fromkeys(p.test_set for p in prompts)},
        "prompts": [{"id": p.id, "test_set": p.test_set, "sha256": sha256_text(p.text)}
                    for p in prompts],
        "answers_sha256": {name: {p.id: sha256_text(answers.answers[name][p.id]) for p in prompts}
                           for name in sorted({m for pair in answers.pairs for m in pair})},
        "sheets": [entry for _, entry in sheets],
    }
    with atomic_dir(out_dir) as tmp:
        for page, entry in sheets:
            target = tmp / entry["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(render_sheet(page), encoding="utf-8")
        if answers.generated:
            for name in answers.answers:
                write_answers(tmp / f"answers-{name}.jsonl", prompts,
                              [answers.answers[name][p.id] for p in prompts])
        (tmp / KEY_FILE).write_text(json.dumps(key, indent=1, ensure_ascii=False) + "\n",
                                    encoding="utf-8")
        write_run_record(tmp / KEY_FILE, {"stage": "bench human export", "seed": seed,
                                          "raters": raters, "per_set": per_set,
                                          "models": answers.sources,
                                          "pairs": key["pairs"], "test_sets": key["test_sets"]})
    items = len(sheets[0][1]["items"])
    log(f"{raters} sheets of {items} items ({len(prompts)} prompts x {len(answers.pairs)} "
        f"pairs) in {out_dir / SHEETS_DIR}; the key (keep it from the raters): "
        f"{out_dir / KEY_FILE}")
    return key


# --------------------------------------------------------------------------------------------
# The key and the ratings, read back
# --------------------------------------------------------------------------------------------


def _json_file(path: Path, what: str, is_what: str) -> Any:
    """The JSON in `path`; a missing or non-JSON file refused in one line naming `what` it
    should be (`is_what`: what such a file is)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GradfilterError(f"{path}: no such {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GradfilterError(f"{path}: not JSON ({is_what})") from None


def read_key(path: Path) -> dict[str, Any]:
    path = Path(path)
    key = _json_file(path, "key file", "a key is the key.json that `bench human export` wrote")
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT:
        raise GradfilterError(f"{path}: not a key of `bench human export` (no format "
                              f"{KEY_FORMAT!r}; a ratings file given as the key?)")
    if key.get("version") != FORMAT_VERSION:
        raise GradfilterError(f"{path}: key version {key.get('version')!r}; this gradfilter "
                              f"reads version {FORMAT_VERSION}")
    return key


def read_ratings(key: dict[str, Any], key_path: Path, paths: Sequence[Path]
                 ) -> dict[str, dict[str, Any]]:
    """{sheet id: {"file": path, "items": {item id: {"choice", "note"}}}} from the raters'
    downloaded files.

    Refused, in one line naming the file: not a ratings file, a sheet that is not in the key
    (another export's), a sheet given twice, a rater label or an item id that is not the
    sheet's (edited), an item rated twice, a choice that is not 1, tie or 2.
    """
    sheets = {sheet["sheet"]: sheet for sheet in key["sheets"]}
    given: dict[str, Path] = {}
    ratings: dict[str, dict[str, Any]] = {}
    for path in map(Path, paths):
        data = _ratings_file(path)
        sheet = sheets.get(data["sheet"])
        if sheet is None:
            raise GradfilterError(f"{path}: sheet {data['sheet']!r} is not one of {key_path}'s "
                                  f"({', '.join(sheets)}): ratings of another export?")
        if data["sheet"] in given:
            raise GradfilterError(f"{path}: sheet {data['sheet']} ({sheet['rater']}) was "
                                  f"already given as {given[data['sheet']]}")
        if data.get("rater") != sheet["rater"]:
            raise GradfilterError(f"{path}: rater {data.get('rater')!r}, but sheet "
                                  f"{data['sheet']} is {sheet['rater']}'s (edited?)")
        given[data["sheet"]] = path
        ratings[data["sheet"]] = {"file": str(path), "items": _sheet_ratings(
            path, data["ratings"], {i["item"] for i in sheet["items"]})}
    return ratings


def _ratings_file(path: Path) -> dict[str, Any]:
    data = _json_file(path, "ratings file",
                      "a ratings file is what a sheet's download button saves")
    if (not isinstance(data, dict) or data.get("format") != RATINGS_FORMAT
            or not isinstance(data.get("sheet"), str) or not isinstance(data.get("ratings"),
                                                                        list)):
        raise GradfilterError(f"{path}: not a ratings file of a gradfilter sheet (format "
                              f"{RATINGS_FORMAT!r} with a sheet and a list of ratings)")
    return data


def _sheet_ratings(path: Path, entries: list, items: set[str]) -> dict[str, dict[str, Any]]:
    ratings: dict[str, dict[str, Any]] = {}
    for k, entry in enumerate(entries):
        where = f"{path}: rating {k}"
        if not isinstance(entry, dict) or not isinstance(entry.get("item"), str):
            raise GradfilterError(f"{where}: not an object with an item id")
        item = entry["item"]
        if item not in items:
            raise GradfilterError(f"{where}: item {item!r} is not on this sheet (edited id?)")
        if item in ratings:
            raise GradfilterError(f"{where}: item {item!r} is rated twice")
        choice = entry.get("choice")
        if choice is not None and choice not in CHOICES:
            raise GradfilterError(f"{where}: item {item!r}: choice {choice!r} is not "
                                  f"{', '.join(CHOICES)} or null")
        note = entry.get("note") or ""
        if not isinstance(note, str):
            raise GradfilterError(f"{where}: item {item!r}: note is not a string")
        ratings[item] = {"choice": choice, "note": note}
    return ratings


def unblind(item: dict[str, Any], choice: str | None) -> str:
    """Model A's (the pair's first model's) outcome from a rater's choice on an item."""
    if choice is None:
        return "unrated"
    if choice == "tie":
        return "tie"
    winner = item["answer_1"] if choice == "1" else (
        item["b"] if item["answer_1"] == item["a"] else item["a"])
    return "win" if winner == item["a"] else "lose"
