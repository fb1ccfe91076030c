"""Conversations cut into their prompt-answer exchanges: every user turn followed directly by an
assistant turn becomes one single-turn record, in file order (the demo's data, and the
benchmarks' ShareGPT pools)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import GradfilterError
from .conversations import Turn, detect_format, to_turns
from .readers import iter_records
from .sources import resolve_source


@dataclass(frozen=True)
class Exchange:
    prompt: str
    answer: str
    origin: str  # "<conversation id or record number>#<turn>"

    def as_alpaca(self) -> dict[str, str]:
        return {"instruction": self.prompt, "input": "", "output": self.answer,
                "source": self.origin}


def exchanges(path: str | Path, max_prompt_chars: int = 400, max_answer_chars: int | None = None,
              min_answer_chars: int = 20, openings_only: bool = False) -> Iterator[Exchange]:
    """The exchanges of `path` (streamed) whose prompt and answer lengths are within bounds,
    each distinct exchange once; records the reader cannot read or validate are passed over
    (they are not data to learn from). `openings_only`: only each conversation's first
    exchange, the one whose prompt needs no earlier turn to make sense."""
    source = resolve_source(path)
    fmt, seen = None, set()
    for record in iter_records(source, skip_bad_records=True):
        if record.error is not None:
            continue
        fmt = fmt or detect_format(record, source)
        try:
            turns = to_turns(record, fmt, source)
        except GradfilterError:
            continue
        for k in _answer_positions(turns, openings_only):
            prompt, answer = turns[k - 1].text.strip(), turns[k].text.strip()
            if (turns[k - 1].role != "user" or turns[k].role != "assistant" or not prompt
                    or len(prompt) > max_prompt_chars or len(answer) < min_answer_chars
                    or (max_answer_chars is not None and len(answer) > max_answer_chars)
                    or (prompt, answer) in seen):
                continue
            seen.add((prompt, answer))
            yield Exchange(prompt, answer, f"{record.data.get('id', record.index)}#{k}")


def _answer_positions(turns: list[Turn], openings_only: bool) -> range:
    """Where an exchange's answer may stand: after any turn, or (openings only) right after the
    conversation's first user turn."""
    if not openings_only:
        return range(1, len(turns))
    first = next((i for i, turn in enumerate(turns) if turn.role == "user"), len(turns))
    return range(first + 1, min(first + 2, len(turns)))
