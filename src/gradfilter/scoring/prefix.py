"""The token prefix every example of a forward-only pass shares, run once.

Under a chat template every example starts with the same tokens (SmolLM2's default system
prompt and the user header: 24 tokens), and datasets with a fixed system prompt or instruction
preamble share far more. A forward-only pass (IFD, perplexity, loss) runs that prefix once,
keeps its keys and values, and runs each micro-batch's rows from the end of the prefix on,
attending to the kept prefix: the same numbers as running every row whole, to float rounding
(tests/test_prefix.py), for fewer tokens. Passes that take gradients never use it: the
adapters act on the prefix too.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .tokenization import Encoded

MIN_SHARED_TOKENS = 4  # below this (a lone BOS), running the prefix again costs next to nothing


def shared_prefix_length(encoded: Sequence[Encoded]) -> int:
    """How many leading tokens all of `encoded` share and none of them needs a prediction
    from: the prefix ends before the position that predicts any example's first response token
    (so every row keeps at least that position and one more token)."""
    if not encoded:
        return 0
    first = encoded[0].input_ids
    shared = len(first)
    for item in encoded:
        ids = item.input_ids
        n = min(shared, len(ids))
        differs = np.nonzero(ids[:n] != first[:n])[0]
        shared = int(differs[0]) if len(differs) else n
        responses = np.nonzero(item.response_mask[1:])[0]  # positions that predict one
        if len(responses):
            shared = min(shared, int(responses[0]))
    return shared if shared >= MIN_SHARED_TOKENS else 0


def without_prefix(encoded: Sequence[Encoded], length: int) -> list[Encoded]:
    return [Encoded(item.input_ids[length:], item.response_mask[length:], item.truncated)
            for item in encoded]


@dataclass
class PrefixCache:
    """The keys and values of the shared prefix (one row), copied out per micro-batch."""

    length: int
    cache: object  # a transformers Cache of batch 1
    keyword: str  # the body's argument for it: `cache` from transformers 5.24 on, else
    # `past_key_values`
    # sum over the prefix's positions i = 1..length of i times its last hidden state (float32,
    # [hidden]): its share of every row's position-weighted pooling (representations.py)
    position_sum: torch.Tensor | None = None

    @classmethod
    def run(cls, body: torch.nn.Module, ids: np.ndarray,
            device: torch.device) -> PrefixCache | None:
        """The prefix's cache; None where the model returns none that can be copied per row
        (older transformers' tuples): the rows then run whole."""
        tokens = torch.from_numpy(ids[None].astype(np.int64)).to(device)
        out = body(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if not hasattr(cache, "batch_repeat_interleave"):
            return None
        keyword = ("cache" if "cache" in inspect.signature(body.forward).parameters
                   else "past_key_values")
        hidden = out.last_hidden_state[0].float()  # [length, hidden]
        positions = torch.arange(1, len(ids) + 1, device=hidden.device, dtype=torch.float32)
        # (elementwise: under autocast a matmul would run in the lower precision)
        return cls(len(ids), cache, keyword, (positions[:, None] * hidden).sum(0))

    def inputs(self, rows: int) -> dict:
        """The body's keyword arguments that hand it a copy of the prefix for `rows` rows (the
        forward appends to the copy)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return {self.keyword: cache, "use_cache": True}

    def attention_mask(self, suffix_mask: torch.Tensor) -> torch.Tensor:
        """The rows' mask over the prefix (all attended) and their own tokens."""
        ones = torch.ones(suffix_mask.shape[0], self.length, dtype=suffix_mask.dtype,
                          device=suffix_mask.device)
        return torch.cat([ones, suffix_mask], dim=1)
