"""Render turns with a template, tokenise, and mark which tokens carry loss (the response).

Plain template (models without a chat template), as in method.md §1: each system or user turn
is its text followed by "\\n"; each assistant turn is its text followed by the EOS token. Every
segment is tokenised on its own (no special tokens) and the ids are concatenated, preceded by
whatever special tokens the tokenizer puts at the start by default (e.g. Llama's BOS). An
Alpaca record's user turn is `instruction` + ("\\n" + `input` if `input`), so its prompt is
`instruction\\n[input\\n]` exactly.

Chat template: the conversation is rendered with the tokenizer's template; each assistant
turn's span is the text the template adds between the prompt rendered with
`add_generation_prompt=True` and the conversation rendered up to and including that turn
(content plus end-of-turn marker), so no generation tags are needed.

With either template, an assistant turn that opens a conversation (no prompt before it) is
context, not response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..config import TemplateChoice, TurnsChoice
from ..data import conversations
from ..data.conversations import Turn
from ..errors import GradfilterError


@dataclass(frozen=True)
class Encoded:
    input_ids: np.ndarray  # int64 [T]
    response_mask: np.ndarray  # bool [T]: token t is a response token (predicted from t-1)
    truncated: bool

    @property
    def n_response_tokens(self) -> int:
        """Response tokens that carry loss (token 0 has no prediction)."""
        return int(self.response_mask[1:].sum())


def resolve_template(tokenizer, choice: TemplateChoice) -> Literal["plain", "chat"]:
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if choice == "chat" and not has_chat:
        raise GradfilterError("--template chat: the proxy's tokenizer has no chat template")
    if choice == "auto":
        return "chat" if has_chat else "plain"
    return choice


def encode(
    turns: list[Turn],
    tokenizer,
    template: Literal["plain", "chat"],
    max_length: int,
    turns_mode: TurnsChoice = "all",
) -> Encoded:
    """Token ids and response mask, truncated from the end to `max_length`."""
    loss = set(conversations.loss_turns(turns, turns_mode))
    if template == "plain":
        ids, mask = _encode_plain(turns, tokenizer, loss)
    else:
        ids, mask = _encode_chat(turns, tokenizer, loss)
    truncated = len(ids) > max_length
    return Encoded(
        np.asarray(ids[:max_length], dtype=np.int64),
        np.asarray(mask[:max_length], dtype=bool),
        truncated,
    )


def _leading_special_ids(tokenizer) -> list[int]:
    """The special tokens (e.g. BOS) the tokenizer puts before the text by default."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    n = len(special) - len(plain)
    if n > 0 and special[n : n + len(plain)] == plain:
        return list(special[:n])
    return []


def _encode_plain(
    turns: list[Turn], tokenizer, loss_turns: set[int]
) -> tuple[list[int], list[bool]]:
    if tokenizer.eos_token_id is None:
        raise GradfilterError("the plain template needs an EOS token; the tokenizer has none")
    ids = _leading_special_ids(tokenizer)
    mask = [False] * len(ids)
    for k, turn in enumerate(turns):
        if turn.role == "assistant":
            piece = tokenizer(turn.text, add_special_tokens=False)["input_ids"]
            piece = [*piece, tokenizer.eos_token_id]
        else:
            piece = tokenizer(turn.text + "\n", add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        mask.extend([k in loss_turns] * len(piece))
    return ids, mask


def _render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _encode_chat(
    turns: list[Turn], tokenizer, loss_turns: set[int]
) -> tuple[list[int], list[bool]]:
    messages = [{"role": turn.role, "content": turn.text} for turn in turns]
    full = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    for k in sorted(loss_turns):
        prompt = _render(tokenizer, messages[:k], generation_prompt=True)
        upto = _render(tokenizer, messages[: k + 1], generation_prompt=False)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise GradfilterError(
                "the proxy's chat template does not render conversations incrementally; "
                "use --template plain"
            )
        spans.append((len(prompt), len(upto)))
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    mask = [any(lo <= start < hi for lo, hi in spans) for start, _ in encoding["offset_mapping"]]
    return ids, mask
