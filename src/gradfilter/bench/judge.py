"""The LLM judge (evaluation.md §3): its prompt, its reply's parsing, an HTTP client for any
OpenAI-compatible chat-completions endpoint, and the judgments' cache.

The judge scores two answers 1-10 with the Cherry / Superfiltering prompt; every pair is judged
in both orders, and `verdict` turns the two score pairs into A's win, tie or loss. Judgments are
cached on disk (one atomically written file each) under the judge model, the prompt, both
answers in their order and the template version: a rerun makes no HTTP call, and an interrupted
run resumes where it stopped. The benchmark that drives it is `judge_benchmark.py`; the
statistics over its outcomes are `pairwise.py`. No torch.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GradfilterError
from .cache import EntryCache, sha256_of
from .pairwise import Outcome
from .prompts import Prompt

Log = Callable[[str], object]

# --------------------------------------------------------------------------------------------
# Judge prompt, reply parsing, verdict
# --------------------------------------------------------------------------------------------

# The pairwise review prompt of the Vicuna / Cherry_LLM / Superfiltering evaluation, word for
# word as in tianyi-lab/Cherry_LLM evaluation/generation/eval.py (`gen_prompt`), which
# Superfiltering reuses; FastChat's older `reviewer`/`prompt` jsonl carries the same request.
JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
JUDGE_TEMPLATE = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{request}\n\n"
)
JUDGE_REQUEST = (
    "We would like to request your feedback on the performance of two AI assistants in response "
    "to the user question displayed above.\nPlease rate the helpfulness, relevance, accuracy, "
    "level of details of their responses. Each assistant receives an overall score on a scale "
    "of 1 to 10, where a higher score indicates better overall performance.\nPlease first output "
    "a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space. In the subsequent line, please "
    "provide a comprehensive explanation of your evaluation, avoiding any potential bias and "
    "ensuring that the order in which the responses were presented does not affect your "
    "judgment."
)
# Part of every judgment's cache key: bump it when the prompt or the parsing rule changes.
TEMPLATE_VERSION = "cherry-v1"


def judge_messages(question: str, answer_1: str, answer_2: str) -> list[dict[str, str]]:
    """The chat messages asking the judge to score answer_1 (Assistant 1) and answer_2.

    The question is the full prompt the targets answered (a Self-Instruct instruction with its
    input): Cherry's script shows the judge the instruction alone, which leaves the judge
    unable to check answers that depend on the input.
    """
    user = JUDGE_TEMPLATE.format(question=question, answer_1=answer_1, answer_2=answer_2,
                                 request=JUDGE_REQUEST)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_NUMBER = r"(\d+(?:\.\d+)?)"
_SCORE_LINE = re.compile(
    rf"(?:[A-Za-z][A-Za-z ]{{0,19}}:\s*)?{_NUMBER}\s*(?:,\s*|\s+){_NUMBER}")


def parse_scores(reply: str) -> tuple[float, float] | None:
    """The two scores on the first non-blank line of a judge reply, or None.

    Cherry's rule (first line, commas read as spaces, exactly two numbers), made a little more
    forgiving where that stays unambiguous: the line may carry `**` emphasis and one short
    label ending in a colon (`Score: 8 7`, `Scores: 8, 7`); the numbers are separated by spaces
    or one comma and lie in 0..10. Anything else (`8 7 9`, `8/10 7/10`, `Assistant 1: 8`, a
    sentence) is unparsed: a score we would have to guess is not a judgment.
    """
    line = next((s.strip() for s in reply.splitlines() if s.strip()), "")
    match = _SCORE_LINE.fullmatch(line.strip("*").strip())
    if match is None:
        return None
    scores = float(match.group(1)), float(match.group(2))
    return scores if all(0 <= s <= 10 for s in scores) else None


def verdict(a_first: tuple[float, float], b_first: tuple[float, float]) -> Outcome:
    """A's outcome from both orders: `a_first` = (A's score, B's score) with A as Assistant 1,
    `b_first` = (B's score, A's score) with B as Assistant 1.

    Win: A better in both orders, or better in one and tied in the other; lose: the mirror;
    everything else (tied in both, or better in one order and worse in the other) ties.
    """
    sign_1 = _sign(a_first[0] - a_first[1])
    sign_2 = _sign(b_first[1] - b_first[0])
    total = sign_1 + sign_2  # each -1, 0 or +1: a sum > 0 is exactly the three winning cases
    return "win" if total > 0 else "lose" if total < 0 else "tie"


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


# --------------------------------------------------------------------------------------------
# Judge client (stdlib HTTP) and the judgments' cache
# --------------------------------------------------------------------------------------------


class _Retryable(Exception):
    """A failure worth trying again: HTTP 429 or 5xx, a timeout, a connection error."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


class JudgeClient:
    """POSTs chat completions to `{url}/chat/completions` (OpenAI-compatible), temperature 0.

    The key is read from the environment variable `key_env` (none is fine for a local server).
    HTTP 429 and 5xx, timeouts and connection errors are retried `tries - 1` times with
    exponential backoff (`backoff`, doubled each time up to `max_backoff`; a 429's Retry-After
    is honoured within that cap); then a one-line GradfilterError names the url and the last
    error. Other HTTP errors fail at once. `calls` counts the HTTP requests made (thread-safe).
    """

    def __init__(self, url: str, model: str, *, key_env: str = "OPENAI_API_KEY",
                 max_tokens: int = 1024, timeout: float = 120.0, tries: int = 6,
                 backoff: float = 2.0, max_backoff: float = 60.0,
                 sleep: Callable[[float], object] = time.sleep):
        if not url.startswith(("http://", "https://")):
            raise GradfilterError(f"judge url {url!r}: not an http(s) url "
                                  "(e.g. http://127.0.0.1:8000/v1)")
        self.url = url.rstrip("/")
        self.endpoint = self.url + "/chat/completions"
        self.model = model
        self.key_env = key_env
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.tries = max(1, tries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.calls = 0
        self._lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The reply's text (`choices[0].message.content`; "" when the server gives none)."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_tokens}).encode("utf-8")
        delay = self.backoff
        for attempt in range(self.tries):
            try:
                return self._post(body)
            except _Retryable as exc:
                last = exc
                if attempt + 1 < self.tries:
                    self.sleep(min(max(delay, exc.wait or 0.0), self.max_backoff))
                    delay *= 2
        raise GradfilterError(f"judge {self.endpoint}: no answer after {self.tries} tries; "
                              f"last error: {_one_line(str(last))}")

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers,
                                         method="POST")
        with self._lock:
            self.calls += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError,
                http.client.HTTPException) as exc:
            raise _Retryable(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None
        return self._content(raw)

    def _http_error(self, exc: urllib.error.HTTPError) -> Exception:
        text = _one_line(exc.read().decode("utf-8", "replace"))[:300]
        message = f"HTTP {exc.code}: {text}"
        if exc.code == 429 or exc.code >= 500:
            return _Retryable(message, _retry_after(exc.headers.get("Retry-After")))
        hint = f" (is ${self.key_env} set?)" if exc.code in (401, 403) else ""
        return GradfilterError(f"judge {self.endpoint}: {message}{hint}")

    def _content(self, raw: bytes) -> str:
        try:
            content = json.loads(raw)["choices"][0]["message"].get("content")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError,
                AttributeError):
            snippet = _one_line(raw[:200].decode("utf-8", "replace"))
            raise GradfilterError(f"judge {self.endpoint}: not a chat-completions reply: "
                                  f"{snippet}") from None
        return content if isinstance(content, str) else ""


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Judgment:
    """One judge verdict on (answer_1, answer_2): the scores, or None if never parsed."""

    scores: tuple[float, float] | None
    reply: str
    attempts: int


def judgment_key(client: JudgeClient, question: str, answer_1: str, answer_2: str) -> str:
    """sha256 of the judge model's name, the question, both answers in their order (which one
    is Assistant 1) and the template version.

    The url is left out on purpose: a local server restarted on another port (or the same model
    behind another gateway) is the same judge, and its judgments must stay reusable. Point a
    different model served under the same name at another cache directory.
    """
    return sha256_of({"judge_model": client.model, "question": question, "answer_1": answer_1,
                    "answer_2": answer_2, "template": TEMPLATE_VERSION})


def judge_once(client: JudgeClient, cache: EntryCache, question: str, answer_1: str,
               answer_2: str, retries: int) -> Judgment:
    """Ask (or read from the cache) the judge's scores; an unparseable reply is asked again,
    the same request, up to `retries` more times. Every attempt is cached as it comes, so a
    rerun asks nothing that was settled and an interrupted retry resumes its count."""
    key = judgment_key(client, question, answer_1, answer_2)
    entry = cache.get(key) or {"scores": None, "reply": "", "attempts": 0}
    messages = judge_messages(question, answer_1, answer_2)
    while entry["scores"] is None and entry["attempts"] < 1 + retries:
        reply = client.complete(messages)
        scores = parse_scores(reply)
        entry = {"scores": list(scores) if scores else None, "reply": reply,
                 "attempts": entry["attempts"] + 1, "judge_model": client.model,
                 "template": TEMPLATE_VERSION}
        cache.put(key, entry)
    scores = tuple(entry["scores"]) if entry["scores"] is not None else None
    return Judgment(scores, entry["reply"], entry["attempts"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Judging two models' answers, prompt by prompt, in both orders
# --------------------------------------------------------------------------------------------

REPLY_SHOWN = 300  # characters of an unparsed reply kept in the report


def judge_pair(prompts: Sequence[Prompt], answers_a: Sequence[str], answers_b: Sequence[str],
               *, client: JudgeClient, cache_dir: Path, retries: int = 3, concurrency: int = 4,
               log: Log = print, label: str = "A vs B") -> list[dict[str, Any]]:
    """One record per prompt: A's outcome against B from both orders, both score pairs, and,
    for an order whose reply never parsed, that reply (truncated)."""
    cache = EntryCache(Path(cache_dir) / "judgments", log)
    jobs = []
    for p, a, b in zip(prompts, answers_a, answers_b, strict=True):
        jobs += [(p.text, a, b), (p.text, b, a)]
    results: list[Judgment] = []
    step = max(1, len(jobs) // 10)
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        futures = [pool.submit(judge_once, client, cache, *job, retries) for job in jobs]
        for k, future in enumerate(futures, start=1):
            results.append(future.result())
            if k % step == 0 or k == len(jobs):
                log(f"{label}: judged {k}/{len(jobs)} (HTTP calls so far: {client.calls})")
    finally:
        # On an error (or Ctrl-C) the requests not yet sent are cancelled, not made.
        pool.shutdown(wait=True, cancel_futures=True)
    return [_prompt_record(p, results[2 * i], results[2 * i + 1])
            for i, p in enumerate(prompts)]


def _prompt_record(prompt: Prompt, a_first: Judgment, b_first: Judgment) -> dict[str, Any]:
    record: dict[str, Any] = {"prompt_id": prompt.id, "test_set": prompt.test_set,
                              "a_first": a_first.scores, "b_first": b_first.scores}
    if a_first.scores is None or b_first.scores is None:
        record["outcome"] = "unparsed"
        record["unparsed"] = [{"order": order, "attempts": j.attempts,
                               "reply": j.reply[:REPLY_SHOWN]}
                              for order, j in (("a_first", a_first), ("b_first", b_first))
                              if j.scores is None]
    else:
        record["outcome"] = verdict(a_first.scores, b_first.scores)
    return record
