"""The LLM-judge benchmark (evaluation.md §3): pairwise judgments of fine-tuned targets' answers.

Two or more targets (PEFT LoRA adapter directories or plain model paths) answer the prompts of
the Superfiltering / Cherry test sets greedily (`answers.py`); a judge model behind any
OpenAI-compatible chat-completions endpoint scores every pair of answers 1-10 in both orders
with the Cherry prompt (`judge.py`); both orders give win / tie / lose and the winning score
(wins - losses) / all + 1, per test set and pooled, with a 95% bootstrap interval over prompts
(`pairwise.py`), reported as results.json and results.md (`pairwise_report.py`).

Answers and judgments are cached on disk: a rerun makes no HTTP call and generates nothing; an
interrupted run resumes where it stopped. Only generation imports torch, inside its functions.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

from ..errors import GradfilterError
from ..outputs import atomic_write_text, write_run_record
from .answers import GENERATION_VERSION, generate_answers, write_answers
from .judge import TEMPLATE_VERSION, JudgeClient, judge_pair
from .pairwise import finite, summarize
from .pairwise_report import results_markdown
from .prompts import load_prompts, prompt_set_name

Log = Callable[[str], object]


def pair_summary(records: Sequence[dict[str, Any]], test_sets: Sequence[str],
                 seed: int) -> dict[str, Any]:
    """Per test set and pooled summaries of one pair's prompt records."""
    per_set = {name: summarize([r["outcome"] for r in records if r["test_set"] == name], seed)
               for name in test_sets}
    return {"test_sets": per_set, "pooled": summarize([r["outcome"] for r in records], seed)}


def model_pairs(names: Sequence[str], mode: Literal["all", "first"] = "all"
                ) -> list[tuple[str, str]]:
    """`all`: every pair (i < j) in the given order; `first`: the first model against each
    other one (cheaper with many models: a method against each baseline)."""
    if mode == "first":
        return [(names[0], other) for other in names[1:]]
    return list(combinations(names, 2))


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check_inputs(models: dict[str, str], prompt_files: Sequence[Path], limit: int | None,
                  retries: int) -> None:
    if len(models) < 2:
        raise GradfilterError("the judge benchmark needs at least two models to compare")
    for name in models:
        if not _NAME.fullmatch(name):
            raise GradfilterError(f"model name {name!r}: use letters, digits, '.', '_' or '-'")
    names = [prompt_set_name(p) for p in prompt_files]
    if not names:
        raise GradfilterError("no prompts files given")
    if len(set(names)) != len(names):
        raise GradfilterError(f"two prompts files share a test set name: {', '.join(names)}")
    if limit is not None and limit < 1:
        raise GradfilterError("limit must be at least 1")
    if retries < 0:
        raise GradfilterError("retries must be 0 or more")


def run_judge_benchmark(models: dict[str, str], prompt_files: list[Path], out_dir: Path, *,
                        judge_url: str, judge_model: str, key_env: str = "OPENAI_API_KEY",
                        max_new_tokens: int = 256, batch_size: int = 8, device: str = "auto",
                        limit: int | None = None, retries: int = 3, seed: int = 0,
                        log: Log = print, judge_max_tokens: int = 1024,
                        timeout: float = 120.0, http_tries: int = 6, backoff: float = 2.0,
                        concurrency: int = 4, pairs: Literal["all", "first"] = "all",
                        cache_dir: Path | None = None) -> dict[str, Any]:
    """Generate, judge both orders, summarize, and write the reports; return the results.

    Parameters (and the CLI options they map to):
    - models: name -> adapter directory or model path (`--model NAME=PATH`, repeated, >= 2);
      names are used in file names.
    - prompt_files: JSONL prompts files (`--prompts FILE`, repeated; default: the five
      `default_prompt_files(shared/data/eval_prompts)`).
    - out_dir: where results.json, results.md, answers-<name>.jsonl and the run record go
      (`--out`).
    - judge_url: the OpenAI-compatible base url, e.g. http://127.0.0.1:8000/v1 (`--judge-url`).
    - judge_model: the `model` field sent to the judge (`--judge-model`).
    - key_env: environment variable holding the API key, none needed locally (`--key-env`).
    - max_new_tokens, batch_size, device: greedy generation (`--max-new-tokens`,
      `--batch-size`, `--device auto|cpu|cuda`).
    - limit: the first N prompts of every test set (`--limit`).
    - retries: extra tries of an unparseable judge reply (`--retries`).
    - seed: bootstrap seed (`--seed`).
    - judge_max_tokens: the judge's reply budget (`--judge-max-tokens`; Cherry used 1024).
    - timeout, http_tries, backoff: per-request timeout in seconds, total tries of a request
      failing with 429/5xx/timeout/connection error, first backoff in seconds (`--timeout`,
      `--http-tries`, `--backoff`).
    - concurrency: judge requests in flight at once (`--concurrency`).
    - pairs: `all` pairs in the given order, or the `first` model against each other one
      (`--pairs all|first`).
    - cache_dir: answers and judgments cache (`--cache-dir`; default out_dir/cache). Reruns
      with the same cache make no HTTP call; `results["run"]["http_calls"]` counts them.
    """
    started = time.perf_counter()
    prompt_files = [Path(p) for p in prompt_files]
    _check_inputs(models, prompt_files, limit, retries)
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    prompts = [p for path in prompt_files for p in load_prompts(path, limit)]
    test_sets = [prompt_set_name(p) for p in prompt_files]
    log(f"{len(prompts)} prompts from {len(prompt_files)} test sets; {len(models)} models")

    answers = {name: generate_answers(path, prompts, max_new_tokens=max_new_tokens,
                                      batch_size=batch_size, device=device,
                                      cache_dir=cache_dir, log=log)
               for name, path in models.items()}
    for name, model_answers in answers.items():
        write_answers(out_dir / f"answers-{name}.jsonl", prompts, model_answers)
    generated = time.perf_counter()

    client = JudgeClient(judge_url, judge_model, key_env=key_env, max_tokens=judge_max_tokens,
                         timeout=timeout, tries=http_tries, backoff=backoff)
    pair_results = []
    for a, b in model_pairs(list(models), pairs):
        records = judge_pair(prompts, answers[a], answers[b], client=client,
                             cache_dir=cache_dir, retries=retries, concurrency=concurrency,
                             log=log, label=f"{a} vs {b}")
        unparsed = [{"prompt_id": r["prompt_id"], **u} for r in records
                    for u in r.pop("unparsed", [])]
        if unparsed:
            log(f"{a} vs {b}: {len(unparsed)} judge replies never parsed (shown in results.md)")
        pair_results.append({"a": a, "b": b, **pair_summary(records, test_sets, seed),
                             "unparsed": unparsed, "verdicts": records})
    results = {
        "benchmark": "judge",
        "judge": {"url": client.url, "model": judge_model, "template": TEMPLATE_VERSION,
                  "max_tokens": judge_max_tokens, "retries": retries},
        "models": dict(models),
        "test_sets": {name: {"file": str(path), "prompts": sum(p.test_set == name
                                                                for p in prompts)}
                      for name, path in zip(test_sets, prompt_files, strict=True)},
        "generation": {"max_new_tokens": max_new_tokens, "decoding": GENERATION_VERSION},
        "seed": seed,
        "pairs": pair_results,
        "run": {"http_calls": client.calls,
                "wall_seconds": {"generate": round(generated - started, 3),
                                 "judge": round(time.perf_counter() - generated, 3)}},
    }
    _write_reports(out_dir, results, device, batch_size, limit, cache_dir)
    log(f"judge benchmark: {client.calls} HTTP calls; results in {out_dir / 'results.md'}")
    return results


def _write_reports(out_dir: Path, results: dict[str, Any], device: str, batch_size: int,
                   limit: int | None, cache_dir: Path) -> None:
    atomic_write_text(out_dir / "results.json",
                      json.dumps(finite(results), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    write_run_record(out_dir / "results.json", {
        "stage": "bench judge", "seed": results["seed"], "judge": results["judge"],
        "models": results["models"], "test_sets": results["test_sets"],
        "generation": {**results["generation"], "batch_size": batch_size, "device": device},
        "limit": limit, "cache_dir": str(cache_dir), "http_calls": results["run"]["http_calls"],
        "wall_seconds": results["run"]["wall_seconds"],
    })
