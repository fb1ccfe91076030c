"""LLM-judge benchmark (evaluation.md §3): pairwise judgments of fine-tuned targets' answers.

Two or more targets (PEFT LoRA adapter directories or plain model paths) answer the prompts of
the Superfiltering / Cherry test sets greedily; a judge model behind any OpenAI-compatible
chat-completions endpoint scores every pair of answers 1-10 in both orders with the Cherry
prompt; both orders give win / tie / lose and the winning score (wins - losses) / all + 1, per
test set and pooled, with a 95% bootstrap interval over prompts.

Everything is cached on disk, one atomically written file per entry: answers keyed by the
model's identity, the prompt and the decoding settings; judgments keyed by the judge model, the
prompt, both answers in their order and the template version. A rerun makes no HTTP call and
generates nothing; an interrupted run resumes where it stopped.

Only generation needs torch, and it imports it inside its functions: loading prompts, judging
and the statistics stay light.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import GradfilterError
from ..outputs import atomic_write_text, write_run_record
from .intervals import Interval, bootstrap

Log = Callable[[str], object]
Outcome = Literal["win", "tie", "lose", "unparsed"]

# --------------------------------------------------------------------------------------------
# Prompt sets
# --------------------------------------------------------------------------------------------

TEST_SETS = ("vicuna", "koala", "wizardlm", "sinstruct", "lima")
# The field holding the prompt, looked for in this order in a file's first record.
PROMPT_FIELDS = ("text", "prompt", "Instruction", "instruction", "conversations")


@dataclass(frozen=True)
class Prompt:
    """One test prompt; `id` is `<test set>-<position>` (0-based record position in its file)."""

    id: str
    test_set: str
    text: str


def default_prompt_files(directory: Path) -> list[Path]:
    """The five test sets of Superfiltering / Cherry in `directory`, in their usual order."""
    return [Path(directory) / f"{name}_test_set.jsonl" for name in TEST_SETS]


def prompt_set_name(path: Path) -> str:
    """`vicuna_test_set.jsonl` -> `vicuna`; any other file: its name without `.jsonl`."""
    return Path(path).name.removesuffix(".jsonl").removesuffix("_test_set")


def load_prompts(path: Path, limit: int | None = None) -> list[Prompt]:
    """The prompts of a JSONL file, the field detected from its first record (PROMPT_FIELDS).

    `instruction` records (Self-Instruct) take their first `instances[].input` as an Alpaca
    record does: `instruction + "\\n" + input` when the input is not empty. `conversations` is
    a string or a list whose first element (a string, or a turn with `value`/`content`) is the
    prompt. Blank lines are skipped. `limit` keeps the first N prompts.
    """
    path = Path(path)
    if not path.is_file():
        raise GradfilterError(f"{path}: no such prompts file")
    name = prompt_set_name(path)
    prompts: list[Prompt] = []
    field: str | None = None
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if limit is not None and len(prompts) >= limit:
                break
            if not line.strip():
                continue
            record = _json_object(path, line_number, line)
            if field is None:
                field = _detect_field(path, line_number, record)
            text = _prompt_text(path, line_number, record, field)
            prompts.append(Prompt(f"{name}-{len(prompts)}", name, text))
    if not prompts:
        raise GradfilterError(f"{path}: no prompts in the file")
    return prompts


def _json_object(path: Path, line_number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise GradfilterError(f"{path}: line {line_number}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise GradfilterError(f"{path}: line {line_number}: not a JSON object")
    return record


def _detect_field(path: Path, line_number: int, record: dict) -> str:
    for field in PROMPT_FIELDS:
        if field in record:
            return field
    raise GradfilterError(
        f"{path}: line {line_number}: no prompt field (looked for {', '.join(PROMPT_FIELDS)}; "
        f"the record has {', '.join(map(str, record)) or 'no fields'})"
    )


def _prompt_text(path: Path, line_number: int, record: dict, field: str) -> str:
    def bad(problem: str, where: str = field) -> GradfilterError:
        return GradfilterError(f"{path}: line {line_number}: field '{where}': {problem}")

    if field not in record:
        raise bad("missing (the file's first record has it)")
    value = record[field]
    if field == "conversations" and isinstance(value, list):
        if not value:
            raise bad("an empty list")
        value = value[0]
        if isinstance(value, dict):
            value = value.get("value", value.get("content"))
    if not isinstance(value, str) or not value.strip():
        raise bad(f"not a non-empty string ({type(value).__name__})")
    if field == "instruction" and "instances" in record:
        value = _with_input(value, record["instances"], bad)
    return value


def _with_input(instruction: str, instances: Any, bad: Callable[..., GradfilterError]) -> str:
    """Self-Instruct: the first instance's input after the instruction, as an Alpaca record."""
    if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
        raise bad("not a list of {input, output} objects", "instances")
    text = instances[0].get("input") or ""
    if not isinstance(text, str):
        raise bad("input is not a string", "instances")
    return f"{instruction}\n{text}" if text else instruction


# --------------------------------------------------------------------------------------------
# Generation (torch imported inside)
# --------------------------------------------------------------------------------------------

# Bumped whenever the way answers are generated changes, so that cached answers are not reused.
GENERATION_VERSION = "greedy-v1"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model", ".jinja", ".txt")


def model_identity(model: str) -> dict[str, Any]:
    """What a model's answers are cached under.

    An adapter directory is its files' sha256 plus its base's identity (so a moved adapter keeps
    its answers and a retrained one does not). A local base (directory or `.gguf` file) is its
    resolved path plus each file's name, size and modification time: hashing gigabytes of base
    weights on every run would cost more than it protects. A hub id is the id.
    """
    path = Path(model)
    config_path = path / "adapter_config.json"
    if config_path.is_file():
        base = _adapter_base(config_path)
        files = sorted(p for p in path.iterdir() if p.name.startswith("adapter_"))
        if not any(p.name.startswith("adapter_model") for p in files):
            raise GradfilterError(f"{path}: an adapter directory without adapter_model weights")
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
        return {"adapter_sha256": digest.hexdigest(), "base": _base_identity(base)}
    return {"model": _base_identity(model)}


def _adapter_base(config_path: Path) -> str:
    try:
        base = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (json.JSONDecodeError, AttributeError):
        raise GradfilterError(f"{config_path}: not a PEFT adapter config") from None
    if not isinstance(base, str) or not base:
        raise GradfilterError(f"{config_path}: no base_model_name_or_path")
    return base


def _base_identity(model: str) -> dict[str, Any]:
    path = Path(model)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    else:
        return {"hub_id": model}
    return {"path": str(path.resolve()),
            "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def answer_key(identity: dict[str, Any], prompt: str, max_new_tokens: int) -> str:
    return _sha256({"model": identity, "prompt": prompt, "max_new_tokens": max_new_tokens,
                    "decoding": GENERATION_VERSION})


def generate_answers(model: str, prompts: Sequence[Prompt], *, max_new_tokens: int,
                     batch_size: int, device: str = "auto", cache_dir: Path | None = None,
                     log: Log = print) -> list[str]:
    """Greedy answers of `model` (an adapter directory or a model path) to `prompts`.

    Answers found in `cache_dir` are reused; the model is loaded only if some are missing, and
    each new answer is cached as soon as its batch is done. The prompt is rendered with the
    tokenizer's chat template (one user turn, generation prompt added) when it has one, else
    with gradfilter's plain template (`prompt + "\\n"` after the tokenizer's leading special
    tokens). A prompt longer than the model's context less `max_new_tokens` keeps its end.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise GradfilterError("max_new_tokens and batch_size must be at least 1")
    cache = _EntryCache(Path(cache_dir) / "answers", log) if cache_dir is not None else None
    identity = model_identity(model)
    keys = [answer_key(identity, p.text, max_new_tokens) for p in prompts]
    answers: list[str | None] = [None] * len(prompts)
    if cache is not None:
        for i, key in enumerate(keys):
            entry = cache.get(key)
            answers[i] = entry["answer"] if entry else None
    missing = [i for i, answer in enumerate(answers) if answer is None]
    log(f"{model}: {len(prompts) - len(missing)} answers cached, {len(missing)} to generate")
    if missing:
        texts = [prompts[i].text for i in missing]
        for k, answer in _generate(model, texts, max_new_tokens, batch_size, device, log):
            i = missing[k]
            answers[i] = answer
            if cache is not None:
                cache.put(keys[i], {"answer": answer, "prompt_id": prompts[i].id,
                                    "model": model, "max_new_tokens": max_new_tokens})
    if any(answer is None for answer in answers):
        raise GradfilterError(f"{model}: generation gave fewer answers than prompts")
    return [str(answer) for answer in answers]


def _load_target(model: str, device: str):
    """(model, tokenizer) for a PEFT adapter directory (merged into its base) or a model path."""
    from ..scoring.proxy import load_model, load_tokenizer, resolve_device

    torch_device = resolve_device(device)  # type: ignore[arg-type]
    config_path = Path(model) / "adapter_config.json"
    if not config_path.is_file():
        return load_model(model, torch_device), load_tokenizer(model)
    from peft import PeftModel

    base = _adapter_base(config_path)
    has_tokenizer = (Path(model) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(model if has_tokenizer else base)
    backbone = load_model(base, torch_device)
    try:
        merged = PeftModel.from_pretrained(backbone, model).merge_and_unload()
    except (OSError, ValueError, KeyError) as exc:
        raise GradfilterError(f"{model}: cannot load the adapter on {base}: {exc}") from None
    return merged.eval().to(torch_device), tokenizer


def _render_ids(tokenizer, text: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 tokenize=False, add_generation_prompt=True)
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return _leading_special_ids(tokenizer) + list(
        tokenizer(text + "\n", add_special_tokens=False)["input_ids"])


def _leading_special_ids(tokenizer) -> list[int]:
    """The special tokens (e.g. BOS) the tokenizer puts before a text by default."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    n = len(special) - len(plain)
    return list(special[:n]) if n > 0 and special[n:n + len(plain)] == plain else []


def _context_length(model) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def _generate(model_path: str, texts: list[str], max_new_tokens: int, batch_size: int,
              device: str, log: Log):
    """Yield (position in `texts`, answer), longest prompts first, batch by batch."""
    import torch
    from transformers import GenerationConfig

    model, tokenizer = _load_target(model_path, device)
    ids = [_render_ids(tokenizer, text) for text in texts]
    context = _context_length(model)
    if context is not None:
        room = context - max_new_tokens
        if room < 1:
            raise GradfilterError(f"{model_path}: max_new_tokens {max_new_tokens} leaves no room "
                                  f"for a prompt in a {context}-token context")
        cut = sum(len(x) > room for x in ids)
        if cut:
            log(f"{model_path}: {cut} prompts longer than {room} tokens keep their last {room}")
        ids = [x[-room:] for x in ids]
    eos = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)} - {None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=pad, eos_token_id=sorted(eos) or None)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    device_of_model = next(model.parameters()).device
    done = 0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        input_ids, mask = _left_pad([ids[i] for i in batch], pad, device_of_model)
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask,
                                 generation_config=config)
        texts_out = tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
        for i, answer in zip(batch, texts_out, strict=True):
            yield i, answer.strip()
        done += len(batch)
        if done == len(order) or done * 10 // len(order) > (done - len(batch)) * 10 // len(order):
            log(f"{model_path}: generated {done}/{len(order)}")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _left_pad(rows: list[list[int]], pad: int, device):
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        if row:
            input_ids[k, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[k, width - len(row):] = 1
    return input_ids.to(device), mask.to(device)


# --------------------------------------------------------------------------------------------
# Judge prompt and reply parsing
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


# --------------------------------------------------------------------------------------------
# Verdicts and winning score
# --------------------------------------------------------------------------------------------


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


def winning_score(wins: int, ties: int, losses: int) -> float:
    """(wins - losses) / all + 1: 2 = A always wins, 1 = even, 0 = A always loses."""
    total = wins + ties + losses
    return (wins - losses) / total + 1 if total else math.nan


def summarize(outcomes: Sequence[Outcome], seed: int = 0) -> dict[str, Any]:
    """Counts and the winning score with its 95% bootstrap interval over the judged prompts;
    unparsed prompts are counted and left out of the score."""
    counts = {k: sum(o == k for o in outcomes) for k in ("win", "tie", "lose", "unparsed")}
    values = np.array([{"win": 1.0, "tie": 0.0, "lose": -1.0}[o] for o in outcomes
                       if o != "unparsed"])
    if len(values):
        interval = bootstrap(lambda idx: float(values[idx].mean()) + 1, [len(values)], seed=seed)
    else:
        interval = Interval(math.nan, math.nan, math.nan)
    return {"wins": counts["win"], "ties": counts["tie"], "losses": counts["lose"],
            "unparsed": counts["unparsed"], "judged": len(values),
            "winning_score": interval.as_dict()}


# --------------------------------------------------------------------------------------------
# Judge client (stdlib HTTP) and the on-disk cache
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


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False)
                          .encode("utf-8")).hexdigest()


class _EntryCache:
    """One JSON file per key, written atomically: a crash never leaves half an entry."""

    def __init__(self, directory: Path, log: Log):
        self.directory = Path(directory)
        self.log = log

    def get(self, key: str) -> dict | None:
        path = self.directory / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.log(f"cache entry {path} is unreadable; recomputing it")
            return None

    def put(self, key: str, entry: dict) -> None:
        atomic_write_text(self.directory / f"{key}.json",
                          json.dumps(entry, ensure_ascii=False) + "\n")


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
    return _sha256({"judge_model": client.model, "question": question, "answer_1": answer_1,
                    "answer_2": answer_2, "template": TEMPLATE_VERSION})


def judge_once(client: JudgeClient, cache: _EntryCache, question: str, answer_1: str,
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
# Judging pairs and the benchmark
# --------------------------------------------------------------------------------------------

REPLY_SHOWN = 300  # characters of an unparsed reply kept in the report


def judge_pair(prompts: Sequence[Prompt], answers_a: Sequence[str], answers_b: Sequence[str],
               *, client: JudgeClient, cache_dir: Path, retries: int = 3, concurrency: int = 4,
               log: Log = print, label: str = "A vs B") -> list[dict[str, Any]]:
    """One record per prompt: A's outcome against B from both orders, both score pairs, and,
    for an order whose reply never parsed, that reply (truncated)."""
    cache = _EntryCache(Path(cache_dir) / "judgments", log)
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
        _write_answers(out_dir / f"answers-{name}.jsonl", prompts, model_answers)
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


def _write_answers(path: Path, prompts: Sequence[Prompt], answers: Sequence[str]) -> None:
    lines = [json.dumps({"id": p.id, "test_set": p.test_set, "prompt": p.text, "answer": a},
                        ensure_ascii=False) + "\n" for p, a in zip(prompts, answers, strict=True)]
    atomic_write_text(path, "".join(lines))


def _write_reports(out_dir: Path, results: dict[str, Any], device: str, batch_size: int,
                   limit: int | None, cache_dir: Path) -> None:
    atomic_write_text(out_dir / "results.json",
                      json.dumps(_finite(results), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    write_run_record(out_dir / "results.json", {
        "stage": "bench judge", "seed": results["seed"], "judge": results["judge"],
        "models": results["models"], "test_sets": results["test_sets"],
        "generation": {**results["generation"], "batch_size": batch_size, "device": device},
        "limit": limit, "cache_dir": str(cache_dir), "http_calls": results["run"]["http_calls"],
        "wall_seconds": results["run"]["wall_seconds"],
    })


def _finite(obj: Any) -> Any:
    """NaN (a test set with no judged prompt) becomes null: JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _score_cell(summary: dict[str, Any]) -> str:
    interval = summary["winning_score"]
    if not math.isfinite(interval["estimate"]):
        return "n/a"
    return str(Interval(interval["estimate"], interval["low"], interval["high"]))


def _reading(summary: dict[str, Any], a: str, b: str) -> str:
    """evaluation.md §0: better only where the interval excludes 1 (even)."""
    low, high = summary["winning_score"]["low"], summary["winning_score"]["high"]
    if math.isfinite(low) and low > 1:
        return f"{a} better"
    if math.isfinite(high) and high < 1:
        return f"{b} better"
    return "tied"


def results_markdown(results: dict[str, Any]) -> str:
    """The human report: one row per pair and test set (and pooled), then unparsed replies."""
    judge = results["judge"]
    n = sum(t["prompts"] for t in results["test_sets"].values())
    lines = [
        "# LLM-judge benchmark", "",
        f"Judge `{judge['model']}` at {judge['url']} (prompt {judge['template']}), both orders; "
        f"{n} prompts per pair. Winning score = (wins - losses) / judged + 1 with its 95% "
        "bootstrap interval over prompts; 1 is even. Unparsed prompts are counted, not scored.",
        "",
    ]
    if n < 30:
        lines += [f"**Smoke test: {n} prompts per pair.**", ""]
    lines += ["| pair (A vs B) | test set | wins | ties | losses | unparsed | winning score "
              "[95% CI] | reading |", "|---|---|---:|---:|---:|---:|---|---|"]
    for pair in results["pairs"]:
        a, b = pair["a"], pair["b"]
        rows = [*pair["test_sets"].items(), ("pooled", pair["pooled"])]
        for name, s in rows:
            lines.append(f"| {a} vs {b} | {name} | {s['wins']} | {s['ties']} | {s['losses']} | "
                         f"{s['unparsed']} | {_score_cell(s)} | {_reading(s, a, b)} |")
    unparsed = [(pair, u) for pair in results["pairs"] for u in pair["unparsed"]]
    if unparsed:
        lines += ["", f"## Unparsed judge replies ({len(unparsed)})", ""]
        for pair, u in unparsed:
            reply = _one_line(u["reply"])[:200].replace("`", "'")
            lines.append(f"- {pair['a']} vs {pair['b']}, {u['prompt_id']}, {u['order']}, "
                         f"{u['attempts']} tries: `{reply}`")
    return "\n".join(lines) + "\n"
