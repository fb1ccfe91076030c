"""Records as conversations: the formats (Alpaca, ShareGPT, OpenAI `messages`, TRL
`prompt`/`completion`) read into turns, and THE conversation rule: which turns are prompt,
which carry loss, which answer a prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import GradfilterError, record_error
from .readers import Record
from .sources import Source

Format = Literal["alpaca", "sharegpt", "messages", "prompt_completion"]
FORMATS: tuple[Format, ...] = ("alpaca", "sharegpt", "messages", "prompt_completion")
# Canonical field names that --fields can map onto a file's own key names.
FIELD_NAMES = ("instruction", "input", "output", "conversations", "from", "value", "messages",
               "role", "content", "prompt", "completion")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}
MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class Turn:
    role: Literal["system", "user", "assistant"]
    text: str


# The conversation rule, the one place that says which turns are prompt and which carry loss.
# System and user turns are prompt. An assistant turn answers a prompt, and so carries loss,
# when anything comes before it; one that opens the conversation is context.


def answering_turns(turns: Sequence[Turn]) -> list[int]:
    """Positions of the assistant turns that answer a prompt (every assistant turn but a first
    turn): the turns that carry loss, and the ones a corruption may change."""
    return [k for k, turn in enumerate(turns) if turn.role == "assistant" and k > 0]


def loss_turns(turns: Sequence[Turn], mode: Literal["all", "last"] = "all") -> list[int]:
    """The answering turns that carry loss: all of them, or the last only."""
    positions = answering_turns(turns)
    return positions[-1:] if mode == "last" else positions


def unscorable_reason(turns: Sequence[Turn]) -> str | None:
    """Why a conversation has nothing to score, or None when it has."""
    if not turns:
        return "empty conversation"
    if not answering_turns(turns):
        return "no assistant turn after a prompt"
    return None


def ends_on_prompt(turns: Sequence[Turn]) -> bool:
    """Answered at least once, but ends on a prompt turn (that tail carries no loss)."""
    return bool(answering_turns(turns)) and turns[-1].role != "assistant"


def prompt_of(turns: Sequence[Turn], k: int) -> str:
    """The prompt answered by turn k: the last system or user turn before it (the turn just
    before it if only assistant turns come first)."""
    before = turns[:k]
    asked = [turn for turn in before if turn.role != "assistant"]
    return (asked or before)[-1].text


def detect_format(
    record: Record, path: Path | Source, fields: Mapping[str, str] | None = None
) -> Format:
    """The format from the first readable record's keys (through the --fields mapping)."""
    if record.error is not None:
        raise GradfilterError(record.error)
    keys = record.data.keys()
    name = _namer(fields)
    if name("conversations") in keys:
        return "sharegpt"
    if name("messages") in keys:
        return "messages"
    if name("prompt") in keys and name("completion") in keys:
        return "prompt_completion"
    if name("instruction") in keys and name("output") in keys:
        return "alpaca"
    raise record_error(
        path,
        record.index,
        None,
        f"cannot tell the format from keys {sorted(keys)}; expected Alpaca "
        "(instruction/input/output), ShareGPT (conversations), OpenAI (messages) or "
        "prompt/completion; name it with --format, map other key names with --fields",
    )


def parse_fields(spec: str | None) -> dict[str, str]:
    """`--fields instruction=question,output=answer` as {canonical: key in the file}."""
    if not spec:
        return {}
    mapping = {}
    for part in spec.split(","):
        canonical, sep, actual = part.partition("=")
        canonical, actual = canonical.strip(), actual.strip()
        if not sep or not actual or canonical not in FIELD_NAMES:
            raise GradfilterError(
                f"--fields: {part.strip()!r} is not NAME=KEY with NAME one of {list(FIELD_NAMES)}"
            )
        mapping[canonical] = actual
    return mapping


def _namer(fields: Mapping[str, str] | None):
    fields = fields or {}
    return lambda canonical: fields.get(canonical, canonical)


def to_turns(
    record: Record, fmt: Format, path: Path | Source, fields: Mapping[str, str] | None = None
) -> list[Turn]:
    """The record as turns: system and user turns are prompt, assistant turns response.

    A place the reader could not read (`record.error`) raises that error here.
    """
    if record.error is not None:
        raise GradfilterError(record.error)
    name = _namer(fields)
    if fmt == "alpaca":
        return _alpaca_turns(record, path, name)
    if fmt == "sharegpt":
        return _chat_turns(record, path, name("conversations"), name("from"), name("value"),
                           SHAREGPT_ROLES)
    if fmt == "messages":
        return _chat_turns(record, path, name("messages"), name("role"), name("content"),
                           MESSAGE_ROLES)
    return _prompt_completion_turns(record, path, name)


def _string_field(record: Record, path: Path | Source, name: str, required: bool) -> str:
    if name not in record.data:
        if required:
            raise record_error(path, record.index, name, "is missing")
        return ""
    value = record.data[name]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        kind = type(value).__name__
        raise record_error(path, record.index, name, f"must be a string, got {kind}")
    return value


def _alpaca_turns(record: Record, path: Path | Source, name) -> list[Turn]:
    instruction = _string_field(record, path, name("instruction"), required=True)
    given = _string_field(record, path, name("input"), required=False)
    output = _string_field(record, path, name("output"), required=True)
    prompt = instruction + ("\n" + given if given else "")
    return [Turn("user", prompt), Turn("assistant", output)]


def _prompt_completion_turns(record: Record, path: Path | Source, name) -> list[Turn]:
    """TRL prompt/completion: each side a string or a list of `{role, content}` messages."""
    turns = []
    for key, role in ((name("prompt"), "user"), (name("completion"), "assistant")):
        value = record.data.get(key)
        if isinstance(value, str):
            turns.append(Turn(role, value))  # type: ignore[arg-type]
        elif isinstance(value, list):
            turns.extend(_chat_turns(record, path, key, name("role"), name("content"),
                                     MESSAGE_ROLES))
        else:
            kind = "missing" if key not in record.data else f"a {type(value).__name__}"
            raise record_error(path, record.index, key,
                               f"must be a string or a list of messages, is {kind}")
    return turns


def _chat_turns(
    record: Record, path: Path | Source, key: str, role_key: str, text_key: str,
    roles: dict[str, str],
) -> list[Turn]:
    if key not in record.data:
        raise record_error(path, record.index, key, "is missing")
    turns_data = record.data[key]
    if not isinstance(turns_data, list):
        kind = type(turns_data).__name__
        raise record_error(path, record.index, key, f"must be a list of turns, got {kind}")
    turns = []
    for k, turn in enumerate(turns_data):
        where = f"{key}[{k}]"
        if not isinstance(turn, dict):
            raise record_error(path, record.index, where, "must be an object")
        role = canonical_role(turn.get(role_key), roles)
        if role is None:
            raise record_error(
                path, record.index, f"{where}.{role_key}", f"unknown role {turn.get(role_key)!r}"
            )
        text = turn.get(text_key)
        if not isinstance(text, str):
            raise record_error(
                path, record.index, f"{where}.{text_key}",
                f"must be a string, got {type(text).__name__}",
            )
        turns.append(Turn(role, text))  # type: ignore[arg-type]
    return turns


def canonical_role(value: object, roles: Mapping[str, str]) -> str | None:
    """The canonical role a turn's role names, None if it names none. Case and surrounding
    whitespace do not count (ShareGPT dumps in the wild write `Human`, `GPT`, ` assistant `)."""
    if not isinstance(value, str):
        return None
    return roles.get(value, roles.get(value.strip().lower()))


def has_role_variants(record: Record, fmt: Format,
                      fields: Mapping[str, str] | None = None) -> bool:
    """Whether a readable record names a role in another case or with spaces around it (read
    as the canonical role; reported, so that the user knows their file was read leniently)."""
    name = _namer(fields)
    if fmt == "sharegpt":
        lists = [(name("conversations"), name("from"), SHAREGPT_ROLES)]
    elif fmt == "messages":
        lists = [(name("messages"), name("role"), MESSAGE_ROLES)]
    elif fmt == "prompt_completion":
        lists = [(name(side), name("role"), MESSAGE_ROLES) for side in ("prompt", "completion")]
    else:
        return False
    for key, role_key, roles in lists:
        turns = record.data.get(key)
        for turn in turns if isinstance(turns, list) else ():
            role = turn.get(role_key) if isinstance(turn, dict) else None
            if isinstance(role, str) and role not in roles and canonical_role(role, roles):
                return True
    return False
