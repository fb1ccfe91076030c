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

A record's text is text: where it spells a special token of the tokenizer (`<|endoftext|>`,
`<|im_start|>`, ...), it is tokenised as the plain characters it is, never as that token; only
the template's own markers (and the plain template's EOS) are special ids. The plain template
tokenises every segment with `split_special_tokens=True`. With the chat template, a
conversation whose text spells a special token is rendered once more with a placeholder in
place of each message's text, which tells the template's own characters from the messages';
the rendered string is cut at the template's special tokens, and each stretch between them is
tokenised with `split_special_tokens=True` (a conversation without such text is tokenised
whole, as before: the two agree wherever no message spells a special token).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
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
    spells_special: bool = False  # the text spells a special token (tokenised as plain text)
    response_tokens_cut: int = 0  # response tokens beyond max_length (never seen)

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
        spells_special_token(turns, tokenizer),
        sum(mask[max(max_length, 1):]),
    )


def _leading_special_ids(tokenizer) -> list[int]:
    """The special tokens (e.g. BOS) the tokenizer puts before the text by default."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    n = len(special) - len(plain)
    if n > 0 and special[n : n + len(plain)] == plain:
        return list(special[:n])
    return []


@lru_cache(maxsize=8)
def special_token_pattern(tokenizer) -> re.Pattern[str] | None:
    """A pattern matching the text of any of the tokenizer's special tokens (longest first),
    None if it has none."""
    names = set(tokenizer.all_special_tokens)
    names |= {token.content for token in getattr(tokenizer, "added_tokens_decoder", {}).values()
              if token.special}
    ordered = sorted((name for name in names if name), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


def spells_special_token(turns: list[Turn], tokenizer) -> bool:
    """Whether any turn's text holds the text of one of the tokenizer's special tokens."""
    pattern = special_token_pattern(tokenizer)
    return pattern is not None and any(pattern.search(turn.text) for turn in turns)


def _text_ids(tokenizer, text: str) -> list[int]:
    """`text` as plain text: no special token added, none recognised in it."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _encode_plain(
    turns: list[Turn], tokenizer, loss_turns: set[int]
) -> tuple[list[int], list[bool]]:
    if tokenizer.eos_token_id is None:
        raise GradfilterError("the plain template needs an EOS token; the tokenizer has none")
    ids = _leading_special_ids(tokenizer)
    mask = [False] * len(ids)
    for k, turn in enumerate(turns):
        if turn.role == "assistant":
            piece = [*_text_ids(tokenizer, turn.text), tokenizer.eos_token_id]
        else:
            piece = _text_ids(tokenizer, turn.text + "\n")
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
    if spells_special_token(turns, tokenizer):
        ids, offsets = _tokenize_text_as_text(tokenizer, messages, full)
    else:
        encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoding["input_ids"]), list(encoding["offset_mapping"])
    mask = [any(lo <= start < hi for lo, hi in spans) for start, _ in offsets]
    return ids, mask


_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")  # private-use characters, in no template


def _template_pieces(tokenizer, messages: list[dict[str, str]], full: str) -> list[str]:
    """The template's own text around the messages' text: `full` is pieces[0] + text of the
    first message + pieces[1] + ... (one piece more than messages)."""
    marked = [{**m, "content": f"\ue000{k}\ue001"} for k, m in enumerate(messages)]
    parts = _PLACEHOLDER.split(_render(tokenizer, marked, generation_prompt=False))
    pieces, order = parts[0::2], [int(k) for k in parts[1::2]]
    rebuilt = pieces[0] + "".join(messages[k]["content"] + piece
                                  for k, piece in zip(order, pieces[1:], strict=True))
    if order != list(range(len(messages))) or rebuilt != full:
        raise GradfilterError(
            "a message spells a special token of the proxy's tokenizer, and its chat template "
            "changes the messages' text, so the template's own tokens cannot be told from the "
            "message's; use --template plain")
    return pieces


def _tokenize_text_as_text(tokenizer, messages: list[dict[str, str]],
                           full: str) -> tuple[list[int], list[tuple[int, int]]]:
    """`full` tokenised with only the template's own special tokens as special ids: it is cut
    at them, and each stretch between them is tokenised with its special-token text as
    plain text. Ids and character offsets into `full`."""
    pattern = special_token_pattern(tokenizer)
    assert pattern is not None
    marks, at = [], 0
    pieces = _template_pieces(tokenizer, messages, full)
    for k, piece in enumerate(pieces):
        marks.extend((at + m.start(), at + m.end()) for m in pattern.finditer(piece))
        at += len(piece) + (len(messages[k]["content"]) if k < len(messages) else 0)
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    start = 0
    for lo, hi in [*marks, (len(full), len(full))]:
        if lo > start:
            stretch = tokenizer(full[start:lo], add_special_tokens=False,
                                split_special_tokens=True, return_offsets_mapping=True)
            ids.extend(stretch["input_ids"])
            offsets.extend((start + a, start + b) for a, b in stretch["offset_mapping"])
        if hi > lo:
            ids.append(tokenizer.convert_tokens_to_ids(full[lo:hi]))
            offsets.append((lo, hi))
        start = hi
    return ids, offsets
