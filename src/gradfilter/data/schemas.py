"""The schema a subset is written in (`--out-schema`): the input's own records (`native`), or
the records as scoring saw them, in the two forms TRL's trainers take as they are.

- `messages`: `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}`, the
  conversational form (OpenAI, TRL's SFTTrainer): the turns `conversations.to_turns` made for
  scoring, roles normalised (ShareGPT's `human`/`gpt` become `user`/`assistant`; Alpaca's
  instruction and input one user turn, as scored).
- `prompt-completion`: `{"prompt": str, "completion": str}`, TRL's standard (not
  conversational) prompt-completion form; prompt + completion is the text the plain template
  scored (every prompt turn followed by a newline, then the answer). It holds one answer: a
  record with more than one assistant turn is refused (write `messages` for those).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..errors import GradfilterError
from .conversations import Format, Turn, to_turns
from .readers import Record
from .sources import Source

Schema = Literal["native", "messages", "prompt-completion"]
SCHEMAS: tuple[Schema, ...] = ("native", "messages", "prompt-completion")


def as_schema(record: Record, schema: Schema, fmt: Format, source: Source | Path,
              fields: dict[str, str] | None) -> dict:
    """The record in `schema` (not `native`: that is the record itself, untouched)."""
    turns = to_turns(record, fmt, source, fields)
    if schema == "messages":
        return {"messages": [{"role": t.role, "content": t.text} for t in turns]}
    if schema == "prompt-completion":
        return prompt_completion(turns, record.index, source)
    raise GradfilterError(f"--out-schema must be one of {list(SCHEMAS)}, got {schema!r}")


def prompt_completion(turns: list[Turn], index: int, source: Source | Path) -> dict:
    """The standard prompt-completion record of a conversation with one answer, at its end."""
    answers = [k for k, turn in enumerate(turns) if turn.role == "assistant"]
    if len(answers) != 1 or answers[0] != len(turns) - 1 or answers[0] == 0:
        raise GradfilterError(
            f"{source}: record {index}: --out-schema prompt-completion holds one answer after "
            f"its prompt, but the record has {len(answers)} assistant turn(s) in {len(turns)} "
            "turns; write --out-schema messages for conversations")
    return {"prompt": "".join(turn.text + "\n" for turn in turns[:-1]),
            "completion": turns[-1].text}
