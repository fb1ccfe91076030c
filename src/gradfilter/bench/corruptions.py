"""Corruptions for the noise benchmark: kinds of bad answer, each a seeded function of (prompt,
answer, context), registered by name.

`SHIPPED` are the four of evaluation.md §1, the default of `bench noise`. The others are opt-in
(`--corruptions swap,...,refusal`): kinds real SFT data carries, written for the studies of
docs/results.md as held-out checks (a score tuned to the shipped four has not been shown to work
on anything else):

- near_duplicate: one fixed non-answer template with a light edit (templated non-answers);
- refusal: a canned non-answer instead of the answer (scraped chat logs are full of them);
- shuffle: the answer's sentences in a random order (on topic, fluent words, incoherent);
- boilerplate: web-scrape debris around a fragment of the answer;
- splice: the first half of the answer joined to the second half of another record's answer;
- typos: one word in six misspelt (OCR, speech transcripts, careless typing);
- roleleak: the answer runs on into a made-up next turn, role markers and all;
- html: the answer as scraped markup (paragraphs in tags, quotes and ampersands as entities);
- flatten: the answer lowercased with its punctuation and line breaks stripped (a sloppy
  transcript);
- doubled: the answer written out twice (a copy-paste duplication; longer, not shorter).

`html`, `flatten` and `doubled` were written for the trend study (docs/results.md, "Trend with
pool size"), committed with its pre-registration before any of its tables was scored. Users add
their own kinds with `register_corruption`.
"""

from __future__ import annotations

import html as html_escape
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.conversations import Turn, answering_turns, prompt_of
from ..errors import GradfilterError
from ..seeds import CORRUPTION_STREAM, derived_seed


@dataclass(frozen=True)
class CorruptionContext:
    """What a corruption may use: its own seeded generator, the proxy's tokenizer, and the
    assistant texts of the whole dataset (for swaps)."""

    rng: np.random.Generator
    tokenizer: object
    responses: Sequence[str]


Corruption = Callable[[str, str, CorruptionContext], str]  # (prompt, response, context) -> new
CORRUPTIONS: dict[str, Corruption] = {}


def register_corruption(name: str) -> Callable[[Corruption], Corruption]:
    """Register `fn(prompt, response, context) -> corrupted response` under `name`."""

    def register(fn: Corruption) -> Corruption:
        CORRUPTIONS[name] = fn
        return fn

    return register


@register_corruption("swap")
def swap_response(prompt: str, response: str, context: CorruptionContext) -> str:
    """Another example's response (drawn until it differs from this one)."""
    for _ in range(100):
        other = context.responses[int(context.rng.integers(len(context.responses)))]
        if other != response:
            return other
    raise GradfilterError("swap corruption: every response in the data is the same")


@register_corruption("truncate")
def truncate_response(prompt: str, response: str, context: CorruptionContext) -> str:
    """The response cut to its first 15% of tokens (at least one)."""
    ids = context.tokenizer(response, add_special_tokens=False)["input_ids"]
    return context.tokenizer.decode(ids[: max(1, math.ceil(0.15 * len(ids)))])


@register_corruption("repeat")
def repeat_ngram(prompt: str, response: str, context: CorruptionContext) -> str:
    """A short n-gram of the response (1-3 words) repeated to the response's word count."""
    words = response.split() or ["the"]
    n = int(context.rng.integers(1, 4))
    start = int(context.rng.integers(max(1, len(words) - n + 1)))
    gram = words[start : start + n]
    return " ".join((gram * (len(words) // len(gram) + 2))[: max(len(words), 2 * len(gram))])


@register_corruption("echo")
def echo_prompt(prompt: str, response: str, context: CorruptionContext) -> str:
    """The prompt echoed back as the response."""
    return prompt


NON_ANSWER = ("I'm sorry, but I can't give a complete answer to that right now. Please let "
              "me know if there is anything else I can help you with.")


@register_corruption("near_duplicate")
def near_duplicate(prompt: str, response: str, context: CorruptionContext) -> str:
    """One fixed non-answer template with a light edit (one word dropped or doubled, seeded):
    every record so corrupted is a near-duplicate of the others, as templated non-answers and
    canned refusals are in real data."""
    words = NON_ANSWER.split()
    k = int(context.rng.integers(len(words)))
    if context.rng.random() < 0.5:
        del words[k]
    else:
        words.insert(k, words[k])
    return " ".join(words)


REFUSALS = (
    "I'm sorry, but as an AI language model, I cannot help with that request.",
    "As an AI language model, I do not have personal opinions or the ability to do that.",
    "I apologize, but I am unable to provide an answer to this question.",
    "I'm sorry, I cannot fulfill this request. Is there anything else I can help you with?",
    "Unfortunately, I don't have enough information to answer that. Please provide more "
    "details.",
    "I am not able to browse the internet or access real-time information, so I cannot "
    "answer this.",
)
DEBRIS = (
    "Accept all cookies. We use cookies to improve your experience. Cookie settings",
    "Share this: Facebook Twitter LinkedIn Email Print",
    "Subscribe to our newsletter! Enter your email address to get the latest updates.",
    "Click here to read more >> Related posts: Top 10 tips you won't believe",
    "Copyright (c) 2021 All rights reserved. Privacy Policy | Terms of Use | Contact Us",
    "Advertisement - Continue reading below",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@register_corruption("refusal")
def refusal(prompt: str, response: str, context: CorruptionContext) -> str:
    """A canned non-answer instead of the answer."""
    return REFUSALS[int(context.rng.integers(len(REFUSALS)))]


@register_corruption("shuffle")
def shuffle_sentences(prompt: str, response: str, context: CorruptionContext) -> str:
    """The answer's sentences (or, for a one-sentence answer, its words) in a random order. A
    one-word answer comes back as it was, and `bench noise` labels it clean."""
    parts = [p for p in _SENTENCE_END.split(response.strip()) if p]
    if len(parts) < 3:
        parts = response.split()
    order = context.rng.permutation(len(parts))
    while len(parts) > 1 and all(int(k) == i for i, k in enumerate(order)):
        order = context.rng.permutation(len(parts))
    return " ".join(parts[int(k)] for k in order)


@register_corruption("boilerplate")
def boilerplate(prompt: str, response: str, context: CorruptionContext) -> str:
    """The first fifth of the answer buried in three lines of web-page debris."""
    words = response.split()
    fragment = " ".join(words[: max(3, len(words) // 5)])
    picks = context.rng.choice(len(DEBRIS), size=3, replace=False)
    return "\n".join([DEBRIS[picks[0]], fragment, DEBRIS[picks[1]], DEBRIS[picks[2]]])


TYPO_SHARE = 6  # one word in six


def _other_response(response: str, context: CorruptionContext) -> str:
    """Another record's answer (a different text), drawn by the corruption's generator."""
    others = [r for r in context.responses if r.strip() != response.strip()]
    return others[int(context.rng.integers(len(others)))] if others else response[::-1]


@register_corruption("splice")
def splice(prompt: str, response: str, context: CorruptionContext) -> str:
    """This answer's first half, then the second half of another record's answer."""
    other = _other_response(response, context)
    head = response[: max(1, response.rfind(" ", 0, len(response) // 2))]
    tail = other[other.find(" ", len(other) // 2) + 1:] or other
    return f"{head} {tail}"


def _typo(word: str, rng) -> str:
    if len(word) < 3:
        return word + word[-1]
    k = int(rng.integers(len(word) - 1))
    edit = int(rng.integers(3))
    if edit == 0:
        return word[:k] + word[k + 1:]  # a letter dropped
    swapped = word[:k] + word[k + 1] + word[k] + word[k + 2:]  # two neighbours swapped
    if edit == 1 or swapped == word:
        return word[:k] + word[k] + word[k:]  # a letter doubled
    return swapped


@register_corruption("typos")
def typos(prompt: str, response: str, context: CorruptionContext) -> str:
    """One word in six (at least one) misspelt; line breaks kept."""
    lines = [line.split(" ") for line in response.split("\n")]
    positions = [(i, j) for i, line in enumerate(lines) for j, w in enumerate(line) if w]
    count = max(1, len(positions) // TYPO_SHARE)
    for pick in context.rng.choice(len(positions), size=count, replace=False):
        i, j = positions[int(pick)]
        lines[i][j] = _typo(lines[i][j], context.rng)
    return "\n".join(" ".join(line) for line in lines)


@register_corruption("roleleak")
def roleleak(prompt: str, response: str, context: CorruptionContext) -> str:
    """The answer, then a made-up next exchange with its role markers left in."""
    other = _other_response(response, context)
    follow_up = other.split("\n")[0][:200]
    return f"{response}\n\nHuman: thanks, one more thing\n\nAssistant: {follow_up}"


@register_corruption("html")
def scraped_markup(prompt: str, response: str, context: CorruptionContext) -> str:
    """Every paragraph wrapped in <p> tags (line breaks inside one as <br>), quotes and
    ampersands as HTML entities: an answer scraped from a page and never unescaped."""
    paragraphs = [p for p in response.strip().split("\n\n") if p.strip()] or [response]
    return "".join(f"<p>{html_escape.escape(p).replace(chr(10), '<br>')}</p>"
                   for p in paragraphs)


_PUNCTUATION = re.compile(r"[^\w\s]")


@register_corruption("flatten")
def flatten(prompt: str, response: str, context: CorruptionContext) -> str:
    """The answer lowercased, its punctuation dropped and its whitespace (line breaks, code
    indentation) collapsed to single spaces."""
    return " ".join(_PUNCTUATION.sub(" ", response.lower()).split())


@register_corruption("doubled")
def doubled(prompt: str, response: str, context: CorruptionContext) -> str:
    """The answer, then the same answer again after a blank line."""
    return f"{response.strip()}\n\n{response.strip()}"


SHIPPED = ("swap", "truncate", "repeat", "echo")
OPT_IN = tuple(name for name in CORRUPTIONS if name not in SHIPPED)


def corrupted_count(fraction: float, records: int) -> int:
    """How many records a draw corrupts: round(fraction * records), halves up."""
    return math.floor(fraction * records + 0.5)


def corrupt(conversations: list[list[Turn]], fraction: float, kinds: Sequence[str], seed: int,
            tokenizer) -> tuple[list[list[Turn]], list[str | None]]:
    """Corrupt round(fraction * N) conversations, the kinds in equal shares, all seeded. A
    corruption that leaves a record as it was (a one-word answer cannot be shuffled) leaves
    it labelled clean: a label is never a claim the text does not bear out."""
    unknown = [k for k in kinds if k not in CORRUPTIONS]
    if unknown:
        raise GradfilterError(f"unknown corruption {unknown}; registered: {list(CORRUPTIONS)}")
    if not 0 < fraction < 1:
        raise GradfilterError(f"--corrupt must be in (0, 1), got {fraction}")
    eligible = [i for i, turns in enumerate(conversations) if answering_turns(turns)]
    count = corrupted_count(fraction, len(conversations))
    if count > len(eligible):
        raise GradfilterError(f"cannot corrupt {count} records: only {len(eligible)} have an "
                              "assistant turn answering a prompt")
    rng = np.random.default_rng(derived_seed(seed, CORRUPTION_STREAM))
    chosen = rng.permutation(eligible)[:count]
    responses = [t.text for turns in conversations for t in turns if t.role == "assistant"]
    context = CorruptionContext(rng, tokenizer, responses)
    labels: list[str | None] = [None] * len(conversations)
    mixed = list(conversations)
    for position, i in enumerate(sorted(int(c) for c in chosen)):
        kind = kinds[position % len(kinds)]
        mixed[i] = _corrupt_turns(conversations[i], CORRUPTIONS[kind], context)
        labels[i] = kind if mixed[i] != conversations[i] else None
    return mixed, labels


def _corrupt_turns(turns: list[Turn], corruption: Corruption, context) -> list[Turn]:
    new = list(turns)
    for k in answering_turns(turns):
        new[k] = Turn("assistant", corruption(prompt_of(turns, k), turns[k].text, context))
    return new
