"""Corruptions of the kinds real SFT data carries, beyond the four `bench noise` injects.

A utility tuned to swap/truncate/repeat/echo has not been shown to work; these are the held-out
kinds (written before any utility was compared on them, and never tuned against):

- refusal: the answer replaced by a canned non-answer, as scraped chat logs are full of;
- shuffle: the answer's sentences in a random order (on topic, fluent words, incoherent; a
  one-word answer cannot be shuffled and stays clean);
- boilerplate: web-scrape debris (cookie banners, share buttons, newsletter pleas) around a
  fragment of the answer.

Use as a plugin: `gradfilter bench noise DATA --plugin real_noise
--corruptions swap,truncate,repeat,echo,refusal,shuffle,boilerplate` with `benchmarks/` on
PYTHONPATH.
"""

from __future__ import annotations

import re

from gradfilter.bench.noise import CorruptionContext, register_corruption

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
