"""The LLM-judge benchmark (evaluation.md §3).

Unit tests: the verdict rule, the winning score, reply parsing, the five real prompt files.
Over real HTTP: the judge client's retries and the judgment cache against a small stdlib
server in a thread (it scripts 429s, 5xx, timeouts and replies that depend on the answers),
and the whole benchmark end to end against `transformers serve` started as a subprocess with a
tiny local judge model trained in seconds to answer "7 5".
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gradfilter.bench import answers as answers_module
from gradfilter.bench.answers import generate_answers, model_identity
from gradfilter.bench.cache import EntryCache
from gradfilter.bench.judge import (
    JudgeClient,
    judge_messages,
    judge_once,
    judge_pair,
    parse_scores,
    verdict,
)
from gradfilter.bench.judge_benchmark import model_pairs, run_judge_benchmark
from gradfilter.bench.pairwise import winning_score
from gradfilter.bench.prompts import Prompt, default_prompt_files, load_prompts
from gradfilter.errors import GradfilterError

EVAL_PROMPTS = Path(os.environ.get(
    "GRADFILTER_EVAL_PROMPTS", Path(__file__).resolve().parents[2] / "shared/data/eval_prompts"))
needs_eval_prompts = pytest.mark.skipif(
    not EVAL_PROMPTS.is_dir(), reason=f"the real test sets are not at {EVAL_PROMPTS}")


# ------------------------------------------------------------------------------------------
# Verdicts, winning score, parsing
# ------------------------------------------------------------------------------------------

# (A vs B with A as Assistant 1, A vs B with B as Assistant 1) -> A's outcome; > better.
VERDICTS = {
    (">", ">"): "win", (">", "="): "win", ("=", ">"): "win",
    ("<", "<"): "lose", ("<", "="): "lose", ("=", "<"): "lose",
    ("=", "="): "tie", (">", "<"): "tie", ("<", ">"): "tie",
}


def _scores(relation: str) -> tuple[float, float]:
    """(A's score, B's score) for a relation."""
    return {">": (8.0, 6.0), "=": (7.0, 7.0), "<": (3.0, 9.0)}[relation]


@pytest.mark.parametrize(("first", "second"), list(VERDICTS))
def test_verdict_every_case_of_both_orders(first, second):
    a_first = _scores(first)  # A is Assistant 1: (A, B)
    a_score, b_score = _scores(second)
    b_first = (b_score, a_score)  # B is Assistant 1: (B, A)
    assert verdict(a_first, b_first) == VERDICTS[(first, second)]


def test_verdict_reads_the_second_order_reversed():
    # The judge always prefers Assistant 1 by 2 points: pure position bias is a tie.
    assert verdict((9, 7), (9, 7)) == "tie"
    # A better by 1 with a +1 bias towards Assistant 1: better in one order, tied in the other.
    assert verdict((8, 6), (7, 7)) == "win"
    assert verdict((7, 7), (8, 6)) == "lose"


@pytest.mark.parametrize(("reply", "scores"), [
    ("8 7\nAssistant 1 is more detailed.", (8.0, 7.0)),
    ("8 7", (8.0, 7.0)),
    ("8, 7\nexplanation", (8.0, 7.0)),
    ("8,7", (8.0, 7.0)),
    ("9.5 6\n", (9.5, 6.0)),
    ("\n\n  10 1  \nmore", (10.0, 1.0)),
    ("Score: 8 7\n...", (8.0, 7.0)),
    ("Scores: 6, 9", (6.0, 9.0)),
    ("**7 7**\nBoth are fine.", (7.0, 7.0)),
    ("0 10", (0.0, 10.0)),
])
def test_parse_scores_good(reply, scores):
    assert parse_scores(reply) == scores


@pytest.mark.parametrize("reply", [
    "", "   \n  ", "8", "8 7 9", "Assistant 1: 8, Assistant 2: 7", "8/10 7/10",
    "Both answers are good.\n8 7", "I would give 8 and 7", "11 3", "8 -7", "8 7.", "eight 7",
    "Assistant 1 receives 8 7",
])
def test_parse_scores_bad(reply):
    assert parse_scores(reply) is None


def test_judge_messages_are_the_cherry_prompt():
    system, user = judge_messages("What is 2+2?", "4", "{five}")
    assert system == {"role": "system", "content": "You are a helpful and precise assistant for "
                      "checking the quality of the answer."}
    text = user["content"]
    assert user["role"] == "user"
    assert text.startswith("[Question]\nWhat is 2+2?\n\n[The Start of Assistant 1's Answer]\n4\n\n"
                           "[The End of Assistant 1's Answer]\n\n[The Start of Assistant 2's "
                           "Answer]\n{five}\n\n[The End of Assistant 2's Answer]\n\n[System]\n"
                           "We would like to request your feedback")
    assert "Please first output a single line containing only two values" in text
    assert text.endswith("does not affect your judgment.\n\n")


def test_model_pairs():
    assert model_pairs(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert model_pairs(["a", "b", "c"], "first") == [("a", "b"), ("a", "c")]


# ------------------------------------------------------------------------------------------
# Prompt files
# ------------------------------------------------------------------------------------------

@needs_eval_prompts
@pytest.mark.parametrize(("name", "count", "first"), [
    ("vicuna", 80, "How can I improve my time management skills?"),
    ("koala", 180, "Can you list the top 20 films or movies between 1930 and 1940"),
    ("wizardlm", 218, "If a car travels 120 miles in 2 hours"),
    ("sinstruct", 252, "The sentence you are given might be too wordy"),
    ("lima", 300, "I'm writing a NeurIPS paper about a new model architecture"),
])
def test_the_five_real_test_sets(name, count, first):
    path = EVAL_PROMPTS / f"{name}_test_set.jsonl"
    assert path in default_prompt_files(EVAL_PROMPTS)
    prompts = load_prompts(path)
    assert len(prompts) == count
    assert prompts[0].text.startswith(first)
    assert [p.id for p in prompts[:2]] == [f"{name}-0", f"{name}-1"]
    assert {p.test_set for p in prompts} == {name}
    assert all(p.text.strip() for p in prompts)
    assert len(load_prompts(path, limit=3)) == 3


@needs_eval_prompts
def test_sinstruct_prompt_is_instruction_then_input():
    path = EVAL_PROMPTS / "sinstruct_test_set.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = load_prompts(path)
    with_input = next(i for i, r in enumerate(records) if r["instances"][0]["input"])
    without = next(i for i, r in enumerate(records) if not r["instances"][0]["input"])
    r = records[with_input]
    assert prompts[with_input].text == r["instruction"] + "\n" + r["instances"][0]["input"]
    assert prompts[without].text == records[without]["instruction"]


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
                    encoding="utf-8")
    return path


def test_any_jsonl_with_a_prompt_field(tmp_path):
    lima = _write(tmp_path / "mine.jsonl", [{"conversations": ["Hi there", "Hello"]},
                                            {"conversations": "Just a string"}, "",
                                            {"conversations": [{"from": "human", "value": "Q?"}]}])
    assert [(p.id, p.text) for p in load_prompts(lima)] == [
        ("mine-0", "Hi there"), ("mine-1", "Just a string"), ("mine-2", "Q?")]
    sinstruct = _write(tmp_path / "si_test_set.jsonl", [
        {"instruction": "Fix it.", "instances": [{"input": "teh cat", "output": "the cat"}]},
        {"instruction": "Say hi.", "instances": [{"input": "", "output": "hi"}]}])
    assert [p.text for p in load_prompts(sinstruct)] == ["Fix it.\nteh cat", "Say hi."]
    assert load_prompts(sinstruct)[0].test_set == "si"


@pytest.mark.parametrize(("lines", "message"), [
    ([{"question": "What?"}], "bad.jsonl: line 1: no prompt field (looked for text, prompt, "
                              "Instruction, instruction, conversations; the record has question)"),
    ([{"text": "ok"}, {"prompt": "other field"}], "bad.jsonl: line 2: field 'text': missing"),
    ([{"text": "ok"}, "{not json"], "bad.jsonl: line 2: not valid JSON"),
    (["[1, 2]"], "bad.jsonl: line 1: not a JSON object"),
    ([{"text": "ok"}, {"text": ""}], "bad.jsonl: line 2: field 'text': not a non-empty string"),
    ([{"text": 3}], "bad.jsonl: line 1: field 'text': not a non-empty string (int)"),
    ([{"conversations": []}], "bad.jsonl: line 1: field 'conversations': an empty list"),
    ([{"instruction": "x", "instances": "no"}], "bad.jsonl: line 1: field 'instances'"),
    ([""], "bad.jsonl: no prompts in the file"),
])
def test_bad_prompts_file_is_one_line_error(tmp_path, lines, message):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(GradfilterError) as caught:
        load_prompts(path)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(str(tmp_path))
    assert message in text


def test_missing_prompts_file(tmp_path):
    with pytest.raises(GradfilterError, match="no such prompts file"):
        load_prompts(tmp_path / "nope.jsonl")


# ------------------------------------------------------------------------------------------
# A scripted OpenAI-compatible server (stdlib, real HTTP on localhost)
# ------------------------------------------------------------------------------------------

Reply = tuple[int, object, dict[str, str]]  # status, JSON payload or raw text, headers


def chat_reply(content: str | None) -> Reply:
    return 200, {"object": "chat.completion",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": "stop"}]}, {}


class ScriptedJudge:
    """A ThreadingHTTPServer in a thread answering POST /v1/chat/completions with `respond`."""

    def __init__(self, respond: Callable[[dict], Reply]):
        self.requests: list[tuple[dict, dict[str, str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append((body, dict(self.headers)))
                status, payload, headers = respond(body)
                data = (json.dumps(payload) if not isinstance(payload, str) else payload).encode()
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing left to answer

            def log_message(self, *args):
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)

    def __enter__(self) -> ScriptedJudge:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def scripted(*replies: Reply) -> Callable[[dict], Reply]:
    queue = list(replies)
    return lambda body: queue.pop(0)


def test_client_request_and_key(monkeypatch):
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    with ScriptedJudge(lambda body: chat_reply("8 7\nok")) as server:
        client = JudgeClient(server.url + "/", "judge-x", key_env="MY_JUDGE_KEY", max_tokens=33)
        assert client.complete(judge_messages("q", "a", "b")) == "8 7\nok"
        monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
        client.complete(judge_messages("q", "a", "b"))
    (first, first_headers), (_, second_headers) = server.requests
    assert first["model"] == "judge-x" and first["temperature"] == 0
    assert first["max_tokens"] == 33 and first["messages"] == judge_messages("q", "a", "b")
    assert "Authorization" not in first_headers
    assert second_headers["Authorization"] == "Bearer sk-test"
    assert client.calls == 2


def test_client_retries_429_5xx_and_timeouts_with_backoff():
    slow_once = []

    def respond(body):
        if not slow_once:
            slow_once.append(1)
            time.sleep(1.0)  # longer than the client's timeout: this reply comes too late
            return chat_reply("too late")
        return queue.pop(0)

    queue = [(429, {"error": "slow down"}, {"Retry-After": "3"}),
             (503, "upstream gone", {}), (500, {"error": "boom"}, {}), chat_reply("6 6")]
    sleeps: list[float] = []
    with ScriptedJudge(respond) as server:
        client = JudgeClient(server.url, "m", tries=6, timeout=0.3, backoff=0.5, max_backoff=10,
                             sleep=sleeps.append)
        assert client.complete([{"role": "user", "content": "hi"}]) == "6 6"
    assert client.calls == 5  # timeout, 429, 503, 500, then the answer
    assert sleeps == [0.5, 3.0, 2.0, 4.0]  # doubled each time; the 429's Retry-After honoured


def test_client_gives_up_with_one_line_error():
    with ScriptedJudge(lambda body: (502, "<html>\nBad gateway\n</html>", {})) as server:
        client = JudgeClient(server.url, "m", tries=3, sleep=lambda s: None)
        with pytest.raises(GradfilterError) as caught:
            client.complete([{"role": "user", "content": "hi"}])
    message = str(caught.value)
    assert "\n" not in message
    assert f"{server.url}/chat/completions" in message
    assert "3 tries" in message and "HTTP 502" in message and "Bad gateway" in message
    assert client.calls == 3


def test_client_does_not_retry_a_client_error():
    with ScriptedJudge(lambda body: (401, {"error": "bad key"}, {})) as server:
        client = JudgeClient(server.url, "m", key_env="SOME_KEY", sleep=lambda s: None)
        with pytest.raises(GradfilterError, match=r"HTTP 401.*bad key.*\$SOME_KEY"):
            client.complete([{"role": "user", "content": "hi"}])
    assert client.calls == 1


def test_client_connection_refused_is_retried_then_named():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    client = JudgeClient(f"http://127.0.0.1:{port}/v1", "m", tries=2, sleep=lambda s: None)
    with pytest.raises(GradfilterError, match=rf"127.0.0.1:{port}/v1/chat/completions.*2 tries"):
        client.complete([{"role": "user", "content": "hi"}])
    assert client.calls == 2


def test_not_a_chat_completion_reply():
    with ScriptedJudge(lambda body: (200, "<html>a web page</html>", {})) as server:
        client = JudgeClient(server.url, "m", sleep=lambda s: None)
        with pytest.raises(GradfilterError, match="not a chat-completions reply: <html>"):
            client.complete([{"role": "user", "content": "hi"}])


def test_unparseable_reply_is_retried_counted_and_cached(tmp_path):
    cache = EntryCache(tmp_path / "judgments", print)
    with ScriptedJudge(scripted(chat_reply("Both are good."), chat_reply(None),
                                chat_reply("8 6\nfine"))) as server:
        client = JudgeClient(server.url, "m", sleep=lambda s: None)
        got = judge_once(client, cache, "q", "a", "b", retries=3)
        assert (got.scores, got.attempts, client.calls) == ((8.0, 6.0), 3, 3)
        again = judge_once(client, cache, "q", "a", "b", retries=3)
        assert (again.scores, client.calls) == ((8.0, 6.0), 3)  # cached: no HTTP call

    with ScriptedJudge(lambda body: chat_reply("I cannot decide.")) as server:
        client = JudgeClient(server.url, "m", sleep=lambda s: None)
        got = judge_once(client, cache, "q2", "a", "b", retries=2)
        assert (got.scores, got.attempts, got.reply) == (None, 3, "I cannot decide.")
        assert client.calls == 3
        assert judge_once(client, cache, "q2", "a", "b", retries=2).attempts == 3
        assert client.calls == 3  # settled as unparsed: a rerun asks nothing
        judge_once(client, cache, "q2", "a", "b", retries=3)
        assert client.calls == 4  # more retries asked for: one more try


def length_judge(bias: int = 1) -> Callable[[dict], Reply]:
    """Scores each answer by its length's last digit, plus `bias` for Assistant 1."""
    def respond(body: dict) -> Reply:
        text = body["messages"][1]["content"]
        if text.startswith("[Question]\nunanswerable"):
            return chat_reply("No idea.\nI cannot score these.")
        one = text.split("[The Start of Assistant 1's Answer]\n")[1].split("\n\n[The End")[0]
        two = text.split("[The Start of Assistant 2's Answer]\n")[1].split("\n\n[The End")[0]
        return chat_reply(f"{len(one) % 10 + bias} {len(two) % 10}\nLonger is better.")
    return respond


def test_judge_pair_both_orders_and_resume(tmp_path):
    prompts = [Prompt(f"t-{i}", "t", f"question {i}") for i in range(6)]
    # A's answer longer, equal, shorter, by more than the judge's position bias of 1.
    answers_a = ["aaaa", "bb", "c", "dddddd", "ee", "f"]
    answers_b = ["a", "xx", "ccc", "dd", "yy", "fffff"]
    expected = ["win", "tie", "lose", "win", "tie", "lose"]
    calls = []

    def failing_after_five(body):
        calls.append(1)
        return length_judge()(body) if len(calls) <= 5 else (400, {"error": "context"}, {})

    with ScriptedJudge(failing_after_five) as server:
        client = JudgeClient(server.url, "m", sleep=lambda s: None)
        with pytest.raises(GradfilterError, match="HTTP 400"):
            judge_pair(prompts, answers_a, answers_b, client=client, cache_dir=tmp_path,
                       concurrency=1, log=lambda s: None)
    assert len(list((tmp_path / "judgments").iterdir())) == 5  # the interrupted run's work
    with ScriptedJudge(length_judge()) as server:  # restarted on another port: same judge
        client = JudgeClient(server.url, "m", sleep=lambda s: None)
        records = judge_pair(prompts, answers_a, answers_b, client=client, cache_dir=tmp_path,
                             concurrency=3, log=lambda s: None)
        assert client.calls == 12 - 5  # resumed: only what was missing
        assert [r["outcome"] for r in records] == expected
        assert records[0]["a_first"] == (5.0, 1.0) and records[0]["b_first"] == (2.0, 4.0)
        again = judge_pair(prompts, answers_a, answers_b, client=client, cache_dir=tmp_path,
                           log=lambda s: None)
        assert client.calls == 7 and again == records


# ------------------------------------------------------------------------------------------
# Generation (tiny models), model identity
# ------------------------------------------------------------------------------------------

def test_model_identity_follows_the_adapter_bytes(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "org/base", "peft_type": "LORA"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    first = model_identity(str(adapter))
    assert first["base"] == {"hub_id": "org/base"}
    moved = tmp_path / "moved"
    adapter.rename(moved)
    assert model_identity(str(moved)) == first
    (moved / "adapter_model.safetensors").write_bytes(b"weights-2")
    assert model_identity(str(moved)) != first
    (moved / "adapter_model.safetensors").unlink()
    with pytest.raises(GradfilterError, match="without adapter_model weights"):
        model_identity(str(moved))


def test_generate_plain_template_truncates_and_caches(gpt2_proxy, tmp_path, monkeypatch):
    prompts = [Prompt("t-0", "t", "Give three tips for staying healthy."),
               Prompt("t-1", "t", "café " * 400)]  # longer than the tiny GPT-2's 256 positions
    logs: list[str] = []
    answers = generate_answers(gpt2_proxy, prompts, max_new_tokens=5, batch_size=2,
                               device="cpu", cache_dir=tmp_path, log=logs.append)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert any("1 prompts longer than 251 tokens keep their last 251" in line for line in logs)
    assert len(list((tmp_path / "answers").iterdir())) == 2

    def no_generation(*args, **kwargs):
        raise AssertionError("a cached answer was generated again")

    monkeypatch.setattr(answers_module, "_generate", no_generation)
    assert generate_answers(gpt2_proxy, prompts, max_new_tokens=5, batch_size=1,
                            device="cpu", cache_dir=tmp_path, log=logs.append) == answers
    assert "0 to generate" in logs[-1]


# ------------------------------------------------------------------------------------------
# End to end over real HTTP: `transformers serve` with a tiny trained judge
# ------------------------------------------------------------------------------------------

JUDGE_REPLY = "7 5\nBoth fine."


@contextlib.contextmanager
def _one_torch_thread():
    """Tiny models run fastest on one thread, and the CI machine may be busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train_tiny_judge(directory: Path) -> str:
    """A tiny chat llama trained (~100 steps) to answer every judge prompt with JUDGE_REPLY.

    It learns from the last 16-128 tokens of judge prompts (about 1,000 tokens each with the
    tiny tokenizer), which is enough for the reply to follow any full prompt and ~20x cheaper.
    """
    import torch
    from tiny import make_proxy
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_proxy(directory, "llama", chat=True, seed=1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    reply = tokenizer(JUDGE_REPLY, add_special_tokens=False)["input_ids"]
    reply = [*reply, tokenizer.eos_token_id]
    rng = random.Random(0)
    words = ["the", "cat", "sleeps", "on", "a", "mat", "eat", "diet", "sleep", "well", "code",
             "python", "42", "café"]
    prompts = []
    for _ in range(8):
        q, a, b = (" ".join(rng.choices(words, k=rng.randint(0, 30))) for _ in range(3))
        text = tokenizer.apply_chat_template(judge_messages(q, a, b), tokenize=False,
                                             add_generation_prompt=True)
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(120):
        tails = [rng.choice(prompts)[-rng.randint(16, 128):] for _ in range(8)]
        width = max(map(len, tails)) + len(reply)
        rows = [t + reply + [0] * (width - len(t) - len(reply)) for t in tails]
        labels = [[-100] * len(t) + reply + [-100] * (width - len(t) - len(reply)) for t in tails]
        mask = [[1] * (len(t) + len(reply)) + [0] * (width - len(t) - len(reply)) for t in tails]
        loss = model(input_ids=torch.tensor(rows), attention_mask=torch.tensor(mask),
                     labels=torch.tensor(labels)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.config.max_position_embeddings = 4096  # judge prompts are ~1,000 tiny tokens
    model.save_pretrained(path)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server(proc: subprocess.Popen, url: str, log: Path, deadline_s: float) -> dict:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited with {proc.returncode}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"transformers serve did not answer {url}/models within {deadline_s:.0f} s:\n"
                f"{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    """`transformers serve <tiny judge>` on a free localhost port; stopped at teardown."""
    with _one_torch_thread():
        model_dir = _train_tiny_judge(tmp_path_factory.mktemp("judge_model"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", model_dir,
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        listing = _wait_for_server(proc, url, log, deadline_s=120)
        assert [m["id"] for m in listing["data"]] == [model_dir]
        yield url, model_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """Two tiny targets: a chat llama, and a PEFT LoRA adapter directory on it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tiny import make_proxy
    from transformers import AutoModelForCausalLM

    base = make_proxy(tmp_path_factory.mktemp("target"), "llama", chat=True)
    torch.manual_seed(0)  # init_lora_weights=False: random A and B, so the answers change
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=4, lora_alpha=8, target_modules=["down_proj"], init_lora_weights=False))
    adapter = tmp_path_factory.mktemp("adapter")
    lora.save_pretrained(adapter)
    return {"base": base, "lora": str(adapter)}


def _prompt_file(tmp_path: Path) -> Path:
    if EVAL_PROMPTS.is_dir():
        return EVAL_PROMPTS / "vicuna_test_set.jsonl"
    return _write(tmp_path / "vicuna_test_set.jsonl", [
        {"question_id": i, "text": t} for i, t in enumerate(
            ["How can I improve my time management skills?", "What is 2+2?",
             "Give three tips for staying healthy.", "Translate: the cat sleeps on the mat."])])


def test_judge_benchmark_end_to_end_over_transformers_serve(judge_server, targets, tmp_path,
                                                           monkeypatch):
    url, judge_model = judge_server
    out = tmp_path / "out"
    prompts_file = _prompt_file(tmp_path)
    logs: list[str] = []

    def run() -> dict:
        with _one_torch_thread():
            return run_judge_benchmark(
                targets, [prompts_file], out, judge_url=url, judge_model=judge_model,
                max_new_tokens=8, batch_size=2, device="cpu", limit=3, retries=1,
                judge_max_tokens=12, timeout=60, backoff=0.05, concurrency=2, log=logs.append)

    results = run()
    assert results["run"]["http_calls"] == 6  # 3 prompts x 2 orders, every reply parsed
    [pair] = results["pairs"]
    assert (pair["a"], pair["b"]) == ("base", "lora")
    tie = {"wins": 0, "ties": 3, "losses": 0, "unparsed": 0, "judged": 3,
           "winning_score": {"estimate": 1.0, "low": 1.0, "high": 1.0}}
    assert pair["pooled"] == tie and pair["test_sets"] == {"vicuna": tie}
    # "7 5" in both orders: A better as Assistant 1, B better as Assistant 1: a tie.
    assert all(v["a_first"] == (7.0, 5.0) == v["b_first"] for v in pair["verdicts"])
    assert [v["prompt_id"] for v in pair["verdicts"]] == ["vicuna-0", "vicuna-1", "vicuna-2"]
    assert pair["unparsed"] == []

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["pairs"][0]["pooled"] == tie and on_disk["judge"]["model"] == judge_model
    assert (out / "results.json.run.json").is_file()
    assert "| base vs lora | vicuna | 0 | 3 | 0 | 0 | 1.000 [1.000, 1.000] | tied |" in (
        out / "results.md").read_text()
    answers = {name: [json.loads(line) for line in (out / f"answers-{name}.jsonl").open()]
               for name in targets}
    assert [a["id"] for a in answers["base"]] == ["vicuna-0", "vicuna-1", "vicuna-2"]
    assert [a["answer"] for a in answers["base"]] != [a["answer"] for a in answers["lora"]]

    # A rerun generates nothing and makes no HTTP call, and reports the same.
    def no_generation(*args, **kwargs):
        raise AssertionError("a cached answer was generated again")

    monkeypatch.setattr(answers_module, "_generate", no_generation)
    again = run()
    assert again["run"]["http_calls"] == 0
    assert again["pairs"] == results["pairs"]
    rerun_disk = json.loads((out / "results.json").read_text())
    assert {k: v for k, v in rerun_disk.items() if k != "run"} == {
        k: v for k, v in on_disk.items() if k != "run"}


def test_judge_benchmark_wins_through_a_scripted_judge(targets, tmp_path):
    """The same benchmark against a judge scoring an answer by its length's last digit, and
    Assistant 1 one point higher: A's outcome per prompt must follow the sign of the difference
    of A's and B's digits, whichever order the judge saw them in. A second prompts file holds a
    prompt the judge never scores: it is retried, counted and shown, not scored."""
    mine = _write(tmp_path / "mine.jsonl", [{"prompt": "unanswerable: the colour of 7?"},
                                            {"prompt": "Name a fruit."}])
    with ScriptedJudge(length_judge(bias=1)) as server, _one_torch_thread():
        results = run_judge_benchmark(
            {"lora": targets["lora"], "base": targets["base"]}, [_prompt_file(tmp_path), mine],
            tmp_path / "o", judge_url=server.url, judge_model="length", max_new_tokens=8,
            batch_size=3, device="cpu", limit=4, retries=2, log=lambda s: None)
    assert results["run"]["http_calls"] == 6 * 2 + 2 * 2  # two unparsed requests, 2 retries each
    answers = {name: [json.loads(line) for line in
                      (tmp_path / "o" / f"answers-{name}.jsonl").open()] for name in targets}
    expected = []
    for a, b in zip(answers["lora"], answers["base"], strict=True):
        d = len(a["answer"]) % 10 - len(b["answer"]) % 10
        unanswerable = a["prompt"].startswith("unanswerable")
        expected.append("unparsed" if unanswerable else "win" if d > 0 else "lose" if d < 0
                        else "tie")
    [pair] = results["pairs"]
    assert [v["outcome"] for v in pair["verdicts"]] == expected
    assert [v["prompt_id"] for v in pair["verdicts"]][-2:] == ["mine-0", "mine-1"]
    assert set(pair["test_sets"]) == {"vicuna", "mine"}
    pooled = pair["pooled"]
    assert (pooled["wins"], pooled["ties"], pooled["losses"], pooled["unparsed"]) == tuple(
        expected.count(k) for k in ("win", "tie", "lose", "unparsed"))
    assert pooled["judged"] == 5 and pair["test_sets"]["mine"]["unparsed"] == 1
    assert pooled["winning_score"]["estimate"] == pytest.approx(
        winning_score(pooled["wins"], pooled["ties"], pooled["losses"]))
    assert [(u["prompt_id"], u["order"], u["attempts"]) for u in pair["unparsed"]] == [
        ("mine-0", "a_first", 3), ("mine-0", "b_first", 3)]
    report = (tmp_path / "o" / "results.md").read_text()
    assert "## Unparsed judge replies (2)" in report
    assert "mine-0, a_first, 3 tries: `No idea. I cannot score these.`" in report


def test_benchmark_input_errors(tmp_path):
    def run(models, url="http://127.0.0.1:9/v1"):
        return run_judge_benchmark(models, [tmp_path / "p.jsonl"], tmp_path, judge_url=url,
                                   judge_model="m")

    with pytest.raises(GradfilterError, match="at least two models"):
        run({"a": "x"})
    with pytest.raises(GradfilterError, match="model name 'a/b'"):
        run({"a/b": "x", "c": "y"})
    with pytest.raises(GradfilterError, match="no such prompts file"):
        run({"a": "x", "b": "y"})
    with pytest.raises(GradfilterError, match="not an http"):
        JudgeClient("127.0.0.1:8000/v1", "m")


def test_cli_bench_judge(targets, tmp_path):
    from conftest import cli_process

    prompts = _write(tmp_path / "p.jsonl", [{"prompt": "Name a fruit."}, {"prompt": "Say hi."}])
    with ScriptedJudge(length_judge(bias=0)) as server:
        result = cli_process("bench", "judge", "--model", f"base={targets['base']}",
                             "--model", f"lora={targets['lora']}", "--prompts", str(prompts),
                             "--out", str(tmp_path / "o"), "--judge-url", server.url,
                             "--judge-model", "length", "--max-new-tokens", "4",
                             "--device", "cpu")
    assert result.returncode == 0, result.stderr
    [pair] = json.loads((tmp_path / "o" / "results.json").read_text())["pairs"]
    assert (pair["a"], pair["b"], pair["pooled"]["judged"]) == ("base", "lora", 2)
    assert "| base vs lora |" in result.stdout
    bad = cli_process("bench", "judge", "--model", "base", "--model", "x=y", "--prompts",
                      str(prompts), "--out", str(tmp_path / "b"), "--judge-url", server.url,
                      "--judge-model", "m")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --model must be NAME=PATH, got 'base'"
