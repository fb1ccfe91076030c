"""The corruption plugins in benchmarks/ (the held-out noise kinds): each one changes every
answer it is given, in the way its docstring says."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import fresh_noise
import real_noise

from gradfilter.bench.noise import CORRUPTIONS, CorruptionContext

ANSWERS = [
    "Sure! Here is the code:\n\n```python\nprint('hello world')\n```\nIt prints a greeting.",
    "The capital of France is Paris. It is a large city with many museums and parks.",
    "Yes.",
    "Well well, all the little balls roll off the hill again and again.",
]


def context(seed: int = 0) -> CorruptionContext:
    return CorruptionContext(np.random.default_rng(seed), None, ANSWERS)


@pytest.mark.parametrize("kind", ["refusal", "shuffle", "boilerplate", "splice", "typos",
                                  "roleleak"])
def test_every_kind_is_registered_and_changes_every_answer(kind):
    for seed in range(5):
        for answer in ANSWERS:
            corrupted = CORRUPTIONS[kind]("a prompt", answer, context(seed))
            # A one-word answer has nothing to shuffle (bench noise then labels it clean).
            unchanged = kind == "shuffle" and len(answer.split()) == 1
            assert (corrupted.strip() == answer.strip()) == unchanged


def test_splice_keeps_this_answers_head_and_another_answers_tail():
    spliced = fresh_noise.splice("q", ANSWERS[1], context())
    head = ANSWERS[1][: ANSWERS[1].rfind(" ", 0, len(ANSWERS[1]) // 2)]
    assert spliced.startswith(head + " ")
    tail = spliced[len(head) + 1:]
    assert any(other.endswith(tail) for other in ANSWERS if other != ANSWERS[1])


def test_typos_misspell_one_word_in_six_and_keep_the_lines():
    corrupted = fresh_noise.typos("q", ANSWERS[0], context())
    assert corrupted.count("\n") == ANSWERS[0].count("\n")
    before, after = ANSWERS[0].split(" "), corrupted.split(" ")
    changed = sum(a != b for a, b in zip(before, after, strict=True))
    assert changed == max(1, len([w for line in ANSWERS[0].split("\n")
                                  for w in line.split(" ") if w]) // fresh_noise.TYPO_SHARE)


def test_roleleak_runs_the_answer_into_a_made_up_turn():
    leaked = fresh_noise.roleleak("q", ANSWERS[1], context())
    assert leaked.startswith(ANSWERS[1] + "\n\nHuman: ") and "\n\nAssistant: " in leaked


def test_refusal_is_a_canned_text():
    assert real_noise.refusal("q", ANSWERS[1], context()) in real_noise.REFUSALS
