"""Three more kinds of noise real SFT data carries, written for the out-of-sample check of the
default (docs/results.md, "A fresh pool"), after the default was chosen and before any utility
was scored on them. Unlike most of the shipped kinds, none of them shortens the answer, so
`length` cannot catch them by length alone:

- splice: the first half of the answer joined to the second half of another record's answer
  (two records merged at the wrong boundary);
- typos: one word in six with a letter dropped, doubled or swapped with its neighbour (OCR,
  speech transcripts, careless typing);
- roleleak: the answer runs on into a made-up next turn, role markers and all, taken from
  another record (a multi-turn log flattened without splitting at the turns).

Use as a plugin next to `real_noise`: `--plugin real_noise --plugin fresh_noise
--corruptions swap,...,splice,typos,roleleak` with `benchmarks/` on PYTHONPATH.
"""

from __future__ import annotations

from gradfilter.bench.noise import CorruptionContext, register_corruption

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
