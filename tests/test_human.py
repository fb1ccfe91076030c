"""Human pairwise ratings: `bench human export` writes blind sheets and a key, `bench human
score` un-blinds the raters' files.

The sheets are tested as a rater uses them: a real headless chromium (tests/browser.py) opens
an exported sheet from file://, rates every item by clicking and by keys, is reloaded half-way,
and downloads the ratings, which `score` then reads back. The statistics are
tests/test_pairwise.py's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from browser import launch, needs_browser, open_page
from conftest import run_cli

from gradfilter.bench.human import (
    answers_from_files,
    answers_from_judge,
    counterbalanced,
    export_sheets,
)
from gradfilter.bench.human_score import score_ratings
from gradfilter.bench.prompts import Prompt
from gradfilter.errors import GradfilterError

MARK = "(thorough)"  # only model A's answers carry it: how a test rater recognises them
SEED = 912345677


def write_answers(directory: Path, sets: dict[str, int], models=("gsnr", "ifd")) -> dict:
    """Answers files of `models`: the first's answers end with MARK. Prompts hold markup and a
    script end tag, which the page must show as text."""
    files = {}
    for k, model in enumerate(models):
        lines = []
        for name, count in sets.items():
            for i in range(count):
                answer = f"Answer {i} to {name}, in the manner number {k}."
                lines.append(json.dumps({"id": f"{name}-{i}", "test_set": name,
                                         "prompt": f"<b>Q</b> {name} {i}? </script> café",
                                         "answer": answer + (f" {MARK}" if k == 0 else "")}))
        files[model] = directory / f"answers-{model}.jsonl"
        files[model].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return files


def sheet_data(path: Path) -> dict:
    page = Path(path).read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="sheet-data">(.*?)</script>', page,
                      re.S)
    assert found is not None
    return json.loads(found.group(1))


def ratings_file(path: Path, sheet: dict, choose) -> Path:
    """What the sheet's download button saves, for a rater choosing `choose(k, item)`."""
    ratings = [{"item": item["id"], "choice": choose(k, item), "note": ""}
               for k, item in enumerate(sheet["items"])]
    path.write_text(json.dumps({"format": "gradfilter-human-ratings", "version": 1,
                                "sheet": sheet["sheet"], "rater": sheet["rater"],
                                "items": len(sheet["items"]),
                                "ratings": [r for r in ratings if r["choice"] != "skip"]}))
    return path


def prefers_a(k: int, item: dict) -> str:
    return "1" if MARK in item["answers"][0] else "2"


@pytest.fixture
def exported(tmp_path):
    files = write_answers(tmp_path, {"vicuna": 4, "koala": 3, "lima": 2})
    out = tmp_path / "human"
    key = export_sheets(answers_from_files(files), out, raters=3, per_set=3, seed=SEED,
                        log=lambda s: None)
    return out, key, files


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------

def test_sheets_are_blind_counterbalanced_and_shuffled_per_rater(exported):
    out, key, _ = exported
    assert key["test_sets"] == {"vicuna": 3, "koala": 3, "lima": 2}  # --per-set 3
    assert [p["id"] for p in key["prompts"]][:4] == ["vicuna-0", "vicuna-1", "vicuna-2",
                                                    "koala-0"]
    orders = []
    for entry in key["sheets"]:
        items = entry["items"]
        assert len(items) == 8 and [i["number"] for i in items] == list(range(1, 9))
        assert sum(i["answer_1"] == "gsnr" for i in items) == 4  # exactly half
        for name, count in key["test_sets"].items():
            first = sum(i["answer_1"] == "gsnr" for i in items if i["test_set"] == name)
            assert abs(2 * first - count) <= 1
        page = (out / entry["file"]).read_text(encoding="utf-8")
        data = sheet_data(out / entry["file"])
        assert [i["id"] for i in data["items"]] == [i["item"] for i in items]
        for shown, keyed in zip(data["items"], items, strict=True):
            assert (MARK in shown["answers"][0]) == (keyed["answer_1"] == "gsnr")
        # The key never appears in the page: no model name, no un-blinding, no seed or hash.
        for secret in ("gsnr", "ifd", "answer_1", str(SEED), "answers-",
                       *key["answers_sha256"]["gsnr"].values()):
            assert secret not in page, secret
        assert "</script> café" not in page  # the prompt's end tag cannot close the script
        assert "<link" not in page and "src=" not in page and "http://" not in page
        orders.append([i["prompt_id"] for i in items])
    assert len({tuple(o) for o in orders}) == 3  # each rater's own order
    assert len({e["sheet"] for e in key["sheets"]}) == 3
    assert not (out / "sheets" / "key.json").exists()


def test_export_is_reproducible_from_the_recorded_seed(tmp_path, exported):
    out, key, files = exported
    again = export_sheets(answers_from_files(files), tmp_path / "again", raters=3, per_set=3,
                          seed=key["seed"], log=lambda s: None)
    assert again == key
    for entry in key["sheets"]:
        assert (tmp_path / "again" / entry["file"]).read_bytes() == (
            out / entry["file"]).read_bytes()
    fresh = export_sheets(answers_from_files(files), tmp_path / "fresh", raters=1,
                          log=lambda s: None)
    assert isinstance(fresh["seed"], int) and fresh["seed"] != key["seed"]


@pytest.mark.parametrize("sizes", [[1], [3], [5, 1], [3, 3, 3], [2, 7, 1, 4]])
def test_counterbalance_halves_each_set_and_the_whole(sizes):
    import numpy as np

    prompts = [Prompt(f"s{s}-{i}", f"s{s}", "q") for s, n in enumerate(sizes) for i in range(n)]
    patterns = set()
    for seed in range(40):
        first = counterbalanced(np.random.default_rng(seed), prompts)
        assert abs(2 * sum(first) - len(prompts)) <= 1
        for s in range(len(sizes)):
            shown = [f for f, p in zip(first, prompts, strict=True) if p.test_set == f"s{s}"]
            assert abs(2 * sum(shown) - len(shown)) <= 1
        patterns.add(tuple(first))
    assert len(patterns) > 1  # drawn, not fixed


def test_export_refuses_bad_inputs(tmp_path, exported):
    out, _, files = exported
    with pytest.raises(GradfilterError, match="not an empty directory"):
        export_sheets(answers_from_files(files), out, log=lambda s: None)
    assert json.loads((out / "key.json").read_text())["seed"] == SEED  # untouched
    (tmp_path / "o").mkdir()
    other = write_answers(tmp_path / "o", {"vicuna": 2}, ("x",))
    with pytest.raises(GradfilterError, match=r"answers-x.jsonl: not the prompts of .*"
                                              r"answers-gsnr.jsonl \(7 of them missing, e.g. "
                                              r"vicuna-2, vicuna-3, koala-0\)"):
        answers_from_files({"gsnr": files["gsnr"], "x": other["x"]})
    with pytest.raises(GradfilterError, match=r"answers-gsnr.jsonl: not the prompts of .*"
                                              r"answers-x.jsonl \(7 others, e.g. vicuna-2"):
        answers_from_files({"x": other["x"], "gsnr": files["gsnr"]})
    with pytest.raises(GradfilterError, match="two or more models"):
        answers_from_files({"gsnr": files["gsnr"]})
    edited = tmp_path / "edited.jsonl"
    edited.write_text(files["ifd"].read_text().replace("koala 1?", "koala one?"))
    with pytest.raises(GradfilterError, match="prompt koala-1 differs"):
        answers_from_files({"gsnr": files["gsnr"], "ifd": edited})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "test_set": "t", "prompt": "p"}\n')
    with pytest.raises(GradfilterError, match=r"bad.jsonl: line 1: field 'answer'"):
        answers_from_files({"gsnr": files["gsnr"], "bad": bad})
    for option, value in (("per_set", 0), ("raters", 0)):
        with pytest.raises(GradfilterError, match="at least 1"):
            export_sheets(answers_from_files(files), tmp_path / option, log=lambda s: None,
                          **{option: value})
        assert not (tmp_path / option).exists()


# ------------------------------------------------------------------------------------------
# Score
# ------------------------------------------------------------------------------------------

def test_score_unblinds_to_the_exact_winning_scores(tmp_path, exported):
    out, key, _ = exported
    sheets = [sheet_data(out / e["file"]) for e in key["sheets"]]
    files = [ratings_file(tmp_path / "r1.json", sheets[0], prefers_a),
             ratings_file(tmp_path / "r2.json", sheets[1], lambda k, item: "1"),
             ratings_file(tmp_path / "r3.json", sheets[2], lambda k, item: "tie")]
    results = score_ratings(out / "key.json", files, tmp_path / "res", log=lambda s: None)
    [pair] = results["pairs"]
    assert (pair["a"], pair["b"]) == ("gsnr", "ifd")
    r1, r2, r3 = (pair["raters"][f"rater-{k}"] for k in (1, 2, 3))
    assert r1["pooled"]["winning_score"] == {"estimate": 2.0, "low": 2.0, "high": 2.0}
    assert all(s["winning_score"]["estimate"] == 2.0 for s in r1["test_sets"].values())
    # Always "Answer 1" on 8 items, 4 of them model A's: exactly even.
    assert (r2["pooled"]["wins"], r2["pooled"]["losses"]) == (4, 4)
    assert r2["pooled"]["winning_score"]["estimate"] == 1.0
    assert r3["pooled"]["ties"] == 8 and r3["pooled"]["winning_score"]["estimate"] == 1.0
    # Majority: A wins where rater-2's "1" was A's answer (two votes), else win/lose/tie: tie.
    expected = {i["prompt_id"]: "win" if i["answer_1"] == "gsnr" else "tie"
                for i in key["sheets"][1]["items"]}
    assert {v["prompt_id"]: v["outcome"] for v in pair["verdicts"]} == expected
    assert pair["pooled"]["wins"] == 4 and pair["pooled"]["ties"] == 4
    assert pair["agreement"]["items"] == 8 and pair["agreement"]["unanimous"] == 0.0
    assert "judge" not in pair
    report = (tmp_path / "res" / "results.md").read_text()
    assert "| rater-1 | pooled | 8 | 0 | 0 | 0 | 2.000 [2.000, 2.000] | gsnr better |" in report
    assert "| rater-2 | pooled | 4 | 0 | 4 | 0 | 1.000 [" in report
    page = (tmp_path / "res" / "results.html").read_text()
    assert "<table>" in page and "<script" not in page and not re.search(r"https?:", page)
    assert 'content="default-src \'none\'' in page  # the policy every page carries
    assert (tmp_path / "res" / "results.json.run.json").is_file()


def test_unrated_items_are_named_and_left_out(tmp_path, exported):
    out, key, _ = exported
    sheet = sheet_data(out / key["sheets"][0]["file"])
    partial = ratings_file(tmp_path / "r1.json", sheet,
                           lambda k, item: "skip" if k in (2, 5) else prefers_a(k, item))
    logs: list[str] = []
    results = score_ratings(out / "key.json", [partial], tmp_path / "res", log=logs.append)
    assert "rater-1 (sheets/rater-1.html): 2 of 8 items unrated: items 3, 6" in logs
    assert any("rater-2 (sheets/rater-2.html): 8 of 8 items unrated (no ratings file given)"
               in line for line in logs)
    pooled = results["pairs"][0]["raters"]["rater-1"]["pooled"]
    assert (pooled["judged"], pooled["unrated"], pooled["winning_score"]["estimate"]) == (
        6, 2, 2.0)
    assert list(results["pairs"][0]["raters"]) == ["rater-1"]
    assert "- rater-1 (sheets/rater-1.html): 2 of 8 unrated: items 3, 6" in (
        tmp_path / "res" / "results.md").read_text()


def _edited(path: Path, tmp_path: Path, edit) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    target = tmp_path / f"edited-{len(list(tmp_path.glob('edited-*')))}.json"
    target.write_text(json.dumps(data))
    return target


def test_score_refuses_ratings_that_do_not_belong_to_the_key(tmp_path, exported):
    out, key, files = exported
    sheet = sheet_data(out / key["sheets"][0]["file"])
    good = ratings_file(tmp_path / "r1.json", sheet, prefers_a)
    other_out = tmp_path / "other"
    export_sheets(answers_from_files(files), other_out, raters=1, seed=1, log=lambda s: None)
    foreign = ratings_file(tmp_path / "foreign.json", sheet_data(other_out / "sheets" /
                                                                "rater-1.html"), prefers_a)
    cases = [
        ([foreign], "is not one of"),
        ([good, good], "was already given as"),
        ([_edited(good, tmp_path, lambda d: d["ratings"][3].update(item="abcdef01"))],
         r"rating 3: item 'abcdef01' is not on this sheet \(edited id\?\)"),
        ([_edited(good, tmp_path, lambda d: d["ratings"].append(dict(d["ratings"][0])))],
         "rating 8: item .* is rated twice"),
        ([_edited(good, tmp_path, lambda d: d["ratings"][0].update(choice="A"))],
         "choice 'A' is not 1, tie, 2 or null"),
        ([_edited(good, tmp_path, lambda d: d.update(rater="rater-2"))],
         r"is rater-1's \(edited\?\)"),
        ([out / "key.json"], "not a ratings file"),
    ]
    for ratings, message in cases:
        code, stdout, stderr = run_cli("bench", "human", "score", out / "key.json", *ratings,
                                       "--out", tmp_path / "res")
        error = (stdout + stderr).strip()
        assert code == 2, error
        assert error.startswith("error: ") and "\n" not in error, error
        assert re.search(message, error), (message, error)
    assert not (tmp_path / "res").exists()  # nothing written
    code, stdout, stderr = run_cli("bench", "human", "score", good, good, "--out",
                                   tmp_path / "res")
    assert code == 2 and "not a key of `bench human export`" in stdout + stderr


# ------------------------------------------------------------------------------------------
# From a judge run, and agreement with the judge
# ------------------------------------------------------------------------------------------

def fake_judge_run(directory: Path, files: dict, outcomes: dict[str, str], a="ifd",
                   b="gsnr") -> Path:
    """A `bench judge` output directory as it writes one: results.json and answers files.
    `outcomes`: a's outcome against b per prompt id."""
    directory.mkdir()
    for name, path in files.items():
        (directory / f"answers-{name}.jsonl").write_text(path.read_text())
    results = {"benchmark": "judge", "judge": {"model": "tiny-judge"},
               "models": {a: "path-a", b: "path-b"},
               "pairs": [{"a": a, "b": b, "verdicts": [
                   {"prompt_id": pid, "test_set": pid.split("-")[0], "outcome": o}
                   for pid, o in outcomes.items()]}]}
    (directory / "results.json").write_text(json.dumps(results))
    return directory


def test_from_judge_and_agreement_with_the_judge(tmp_path):
    files = write_answers(tmp_path, {"vicuna": 2, "koala": 2})
    # The judge compared ifd against gsnr (the reverse of the raters' gsnr-first reading).
    judged = {"vicuna-0": "lose", "vicuna-1": "lose", "koala-0": "win", "koala-1": "unparsed"}
    judge_dir = fake_judge_run(tmp_path / "judge", files, judged)
    out = tmp_path / "human"
    code, stdout, stderr = run_cli("bench", "human", "export", "--from-judge", judge_dir,
                                   "--out", out, "--raters", "2", "--seed", "5")
    assert code == 0, stdout + stderr
    key = json.loads((out / "key.json").read_text())
    assert key["pairs"] == [["ifd", "gsnr"]] and key["judge"] == str(judge_dir.resolve())
    sheets = [sheet_data(out / e["file"]) for e in key["sheets"]]
    files_in = [ratings_file(tmp_path / f"r{k}.json", s, lambda k, item: "2"
                             if MARK in item["answers"][1] else "1")  # both prefer gsnr
                for k, s in enumerate(sheets)]
    code, stdout, stderr = run_cli("bench", "human", "score", out / "key.json", *files_in,
                                   "--out", tmp_path / "res")
    assert code == 0, stdout + stderr
    [pair] = json.loads((tmp_path / "res" / "results.json").read_text())["pairs"]
    assert pair["pooled"]["losses"] == 4 and pair["pooled"]["winning_score"]["estimate"] == 0.0
    judge = pair["judge"]
    assert judge["model"] == "tiny-judge"
    # Humans: ifd loses all 4; judge: lose, lose, win, unparsed -> 3 items both scored.
    assert judge["majority"]["items"] == 3
    assert judge["majority"]["confusion"] == [[0, 0, 0], [0, 0, 0], [1, 0, 2]]
    assert judge["majority"]["equal"] == pytest.approx(2 / 3)
    assert [v["judge"] for v in pair["verdicts"]] == ["lose", "lose", "win", "unparsed"]
    assert "Agreement with the judge (`tiny-judge`" in (tmp_path / "res" / "results.md"
                                                        ).read_text()

    # A judge run over other answers is not the same pairs: refused in one line.
    changed = fake_judge_run(tmp_path / "other-judge", files, judged)
    path = changed / "answers-gsnr.jsonl"
    path.write_text(path.read_text().replace("manner number 0", "manner number 9"))
    code, stdout, stderr = run_cli("bench", "human", "score", out / "key.json", *files_in,
                                   "--out", tmp_path / "res2", "--judge", changed)
    assert code == 2 and "the judge run compared other answers" in stdout + stderr
    assert answers_from_judge(judge_dir, "all").pairs == [("ifd", "gsnr")]


def test_export_generates_the_answers_without_a_judge(gpt2_proxy, llama_proxy, tmp_path,
                                                      monkeypatch):
    from gradfilter.bench import answers as answers_module

    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps({"prompt": f"Name {i} fruits."}) + "\n"
                             for i in range(3)))
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps({"text": f"Say hi {i} times."}) + "\n"
                              for i in range(2)))

    def export(out: Path) -> dict:
        code, stdout, stderr = run_cli(
            "bench", "human", "export", "--model", f"gpt={gpt2_proxy}", "--model",
            f"llama={llama_proxy}", "--prompts", first, "--prompts", second, "--per-set", "2",
            "--max-new-tokens", "4", "--device", "cpu", "--raters", "2", "--seed", "1",
            "--cache-dir", tmp_path / "cache", "--out", out)
        assert code == 0, stdout + stderr
        return json.loads((out / "key.json").read_text())

    key = export(tmp_path / "h")
    assert key["test_sets"] == {"first": 2, "second": 2}
    assert key["models"] == {"gpt": gpt2_proxy, "llama": llama_proxy}
    generated = {name: {r["id"]: r["answer"] for r in map(json.loads, (
        tmp_path / "h" / f"answers-{name}.jsonl").read_text().splitlines())}
        for name in ("gpt", "llama")}
    assert list(generated["gpt"]) == ["first-0", "first-1", "second-0", "second-1"]
    for entry in key["sheets"]:
        for shown, keyed in zip(sheet_data(tmp_path / "h" / entry["file"])["items"],
                                entry["items"], strict=True):
            other = "llama" if keyed["answer_1"] == "gpt" else "gpt"
            assert shown["answers"] == [generated[keyed["answer_1"]][keyed["prompt_id"]],
                                        generated[other][keyed["prompt_id"]]]
    assert len(list((tmp_path / "cache" / "answers").iterdir())) == 8

    def no_generation(*args, **kwargs):
        raise AssertionError("a cached answer was generated again")

    monkeypatch.setattr(answers_module, "_generate", no_generation)
    assert export(tmp_path / "again") == key  # from the cache, the same sheets
    code, stdout, stderr = run_cli("bench", "human", "export", "--model", f"gpt={gpt2_proxy}",
                                   "--answers", f"x={first}", "--out", tmp_path / "x")
    assert code == 2 and "give one of --from-judge DIR, --answers" in stdout + stderr


def test_human_commands_never_import_torch(tmp_path, exported):
    from test_torch_boundary import _torch_modules_after

    out, key, files = exported
    sheet = sheet_data(out / key["sheets"][0]["file"])
    rated = ratings_file(tmp_path / "r1.json", sheet, prefers_a)
    assert _torch_modules_after("bench", "human", "export", "--answers",
                                f"gsnr={files['gsnr']}", "--answers", f"ifd={files['ifd']}",
                                "--out", str(tmp_path / "h"), "--per-set", "1") == []
    assert _torch_modules_after("bench", "human", "score", str(out / "key.json"), str(rated),
                                "--out", str(tmp_path / "res")) == []
    assert (tmp_path / "res" / "results.json").is_file()


# ------------------------------------------------------------------------------------------
# In a real browser
# ------------------------------------------------------------------------------------------

def _pressed(page) -> str | None:
    for choice in ("1", "tie", "2"):
        if page.get_attribute(f"#choose-{choice}", "aria-pressed") == "true":
            return choice
    return None


def _rate_in_browser(browser, path: Path, downloads: Path, decide,
                     note_on: int | None = None) -> Path:
    """Rate every item of the sheet at `path` as `decide(answer 1, answer 2)` says, by
    clicking the first half and by keys the second, reloading half-way; return the downloaded
    ratings file."""
    keys = {"1": "1", "tie": "t", "2": "2"}
    with open_page(path, browser) as opened:
        page, requests = opened.page, opened.requests
        total = int(page.text_content("#position").split(" of ")[1])
        assert page.text_content("#progress") == f"0 of {total} rated"
        for k in range(total):
            if k == total // 2:
                page.reload()
                assert page.text_content("#progress") == f"{k} of {total} rated"
                assert page.text_content("#position") == f"Item {k + 1} of {total}"
                page.keyboard.press("ArrowLeft")  # the last rated item kept its rating
                assert _pressed(page) is not None
                page.keyboard.press("ArrowRight")
            assert page.text_content("#position") == f"Item {k + 1} of {total}"
            choice = decide(page.text_content("#answer-1"), page.text_content("#answer-2"))
            if k == note_on:
                page.keyboard.press("n")
                page.keyboard.type("too short, 2 is wrong")  # typing rates nothing
                page.keyboard.press("Escape")
                assert page.text_content("#progress") == f"{k} of {total} rated"
            if k < total // 2:
                page.click(f"#choose-{choice}")
            else:
                page.keyboard.press(keys[choice])
        assert page.text_content("#progress") == f"{total} of {total} rated"
        assert page.is_visible("#done")
        with page.expect_download() as download_info:
            page.click("#download")
        target = downloads / download_info.value.suggested_filename
        download_info.value.save_as(target)
        source = page.content()
        assert all(url.startswith("file:") or url.startswith("blob:") for url in requests), \
            requests
    assert "gsnr" not in source and "ifd" not in source
    return target


@needs_browser
def test_browser_rates_reloads_downloads_and_score_reads_it(tmp_path, exported):
    out, key, _ = exported
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with launch() as browser:
        always_a = _rate_in_browser(browser, out / "sheets" / "rater-1.html", downloads,
                                    lambda one, two: "1" if MARK in one else "2", note_on=1)
        always_1 = _rate_in_browser(browser, out / "sheets" / "rater-2.html", downloads,
                                    lambda one, two: "1")
        ties = _rate_in_browser(browser, out / "sheets" / "rater-3.html", downloads,
                                lambda one, two: "tie")
    saved = json.loads(always_a.read_text())
    assert saved["sheet"] == key["sheets"][0]["sheet"] and len(saved["ratings"]) == 8
    assert always_a.name == f"ratings-rater-1-{saved['sheet']}.json"
    noted = [r for r in saved["ratings"] if r["note"]]
    assert [r["note"] for r in noted] == ["too short, 2 is wrong"]

    code, stdout, stderr = run_cli("bench", "human", "score", out / "key.json", always_a,
                                   always_1, ties, "--out", tmp_path / "res")
    assert code == 0, stdout + stderr
    [pair] = json.loads((tmp_path / "res" / "results.json").read_text())["pairs"]
    raters = pair["raters"]
    assert raters["rater-1"]["pooled"]["winning_score"]["estimate"] == 2.0  # whatever position
    assert raters["rater-2"]["pooled"]["winning_score"]["estimate"] == 1.0  # bias cancels
    assert (raters["rater-2"]["pooled"]["wins"], raters["rater-2"]["pooled"]["losses"]) == (4, 4)
    assert raters["rater-3"]["pooled"]["ties"] == 8
    assert [v["notes"] for v in pair["verdicts"] if "notes" in v] == [
        {"rater-1": "too short, 2 is wrong"}]
