"""The opt-in corruption kinds of the package's registry (the held-out noise kinds of the
studies): each one changes every answer it is given, in the way its docstring says."""

import html

import numpy as np
import pytest

from gradfilter.bench import corruptions
from gradfilter.bench.corruptions import CORRUPTIONS, SHIPPED, CorruptionContext, corrupt
from gradfilter.data.conversations import Turn

ANSWERS = [
    "Sure! Here is the code:\n\n```python\nprint('hello world')\n```\nIt prints a greeting.",
    "The capital of France is Paris. It is a large city with many museums and parks.",
    "Yes.",
    "Well well, all the little balls roll off the hill again and again.",
]


def context(seed: int = 0) -> CorruptionContext:
    return CorruptionContext(np.random.default_rng(seed), None, ANSWERS)


@pytest.mark.parametrize("kind", ["refusal", "shuffle", "boilerplate", "splice", "typos",
                                  "roleleak", "html", "flatten", "doubled"])
def test_every_kind_is_registered_and_changes_every_answer(kind):
    for seed in range(5):
        for answer in ANSWERS:
            corrupted = CORRUPTIONS[kind]("a prompt", answer, context(seed))
            # A one-word answer has nothing to shuffle (bench noise then labels it clean).
            unchanged = kind == "shuffle" and len(answer.split()) == 1
            assert (corrupted.strip() == answer.strip()) == unchanged


def test_splice_keeps_this_answers_head_and_another_answers_tail():
    spliced = corruptions.splice("q", ANSWERS[1], context())
    head = ANSWERS[1][: ANSWERS[1].rfind(" ", 0, len(ANSWERS[1]) // 2)]
    assert spliced.startswith(head + " ")
    tail = spliced[len(head) + 1:]
    assert any(other.endswith(tail) for other in ANSWERS if other != ANSWERS[1])


def test_typos_misspell_one_word_in_six_and_keep_the_lines():
    corrupted = corruptions.typos("q", ANSWERS[0], context())
    assert corrupted.count("\n") == ANSWERS[0].count("\n")
    before, after = ANSWERS[0].split(" "), corrupted.split(" ")
    changed = sum(a != b for a, b in zip(before, after, strict=True))
    assert changed == max(1, len([w for line in ANSWERS[0].split("\n")
                                  for w in line.split(" ") if w]) // corruptions.TYPO_SHARE)


def test_roleleak_runs_the_answer_into_a_made_up_turn():
    leaked = corruptions.roleleak("q", ANSWERS[1], context())
    assert leaked.startswith(ANSWERS[1] + "\n\nHuman: ") and "\n\nAssistant: " in leaked


def test_refusal_is_a_canned_text():
    assert corruptions.refusal("q", ANSWERS[1], context()) in corruptions.REFUSALS


def test_html_is_the_answer_as_unescaped_markup():
    scraped = corruptions.scraped_markup("q", "a < b & \"c\"\nnext line\n\nsecond", context())
    assert scraped == ("<p>a &lt; b &amp; &quot;c&quot;<br>next line</p><p>second</p>")
    assert html.unescape(scraped.replace("<p>", "").replace("</p>", "")) != scraped


def test_flatten_keeps_the_words_lowercased_in_order():
    flat = corruptions.flatten("q", ANSWERS[0], context())
    assert flat == flat.lower() and "\n" not in flat and "  " not in flat
    assert flat.split() == [w for w in flat.split() if w.isalnum() or "_" in w]
    assert flat.startswith("sure here is the code python print hello world")


def test_doubled_is_the_answer_twice_and_longer():
    twice = corruptions.doubled("q", ANSWERS[1], context())
    assert twice == ANSWERS[1] + "\n\n" + ANSWERS[1]


def test_opt_in_kinds_are_not_the_default_and_corrupt_through_the_registry():
    assert SHIPPED == ("swap", "truncate", "repeat", "echo")
    conversations = [[Turn("user", f"q{i}"), Turn("assistant", answer)]
                     for i, answer in enumerate(ANSWERS * 3)]
    mixed, labels = corrupt(conversations, 0.5, ["html", "doubled"], seed=3, tokenizer=None)
    assert sorted(filter(None, labels)) == ["doubled"] * 3 + ["html"] * 3
    for turns, before, label in zip(mixed, conversations, labels, strict=True):
        assert (turns != before) == (label is not None)
