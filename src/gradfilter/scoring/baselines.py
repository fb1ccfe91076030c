"""Baselines of method.md §6, each written as a statistics table that `select` reads like G-SNR's.

    perplexity  PPL(y|x): exp of the mean cross-entropy of the response tokens given the prompt
                (one column; `perplexity-low` ranks it lowest first, `perplexity-high` and
                plain `perplexity` highest first)
    ifd         PPL(y|x) / PPL(y) (Superfiltering); kept only where < 1, highest first
    loss        minus the mean cross-entropy of the response given the prompt (low loss kept)
    length      response tokens (longest first)
    random      a seeded uniform draw
    rds         with target examples (ifd's pass): RDS+, the cosine of each record's
                position-weighted mean last hidden state with each target example's
                (representations.py), ranked by RDS+'s round robin (`rds`) or the mean
                cosine (`rds-mean`); taken from PPL(y|x)'s forward, plus one over the targets

PPL(y) scores the same response tokens as PPL(y|x), preceded by one start token (the
tokenizer's BOS, else its EOS) instead of the prompt, so both perplexities average over
exactly the same tokens. Both are forward-only passes over length-sorted batches, each run in
micro-batches within the forward pass's token budget (`--batch-tokens`), the prefix every
example shares (a chat template's header, a fixed system prompt) run once (prefix.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..alignment import rds_scores
from ..config import BASELINES
from ..errors import GradfilterError
from ..progress import advance_bar
from ..seeds import RANDOM_STREAM, derived_seed
from ..utilities import PERPLEXITY, superfiltering_score
from .batching import Batcher, collection_batches, micro_batches
from .ensemble import last_hidden, per_example_losses
from .prefix import PrefixCache, shared_prefix_length, without_prefix
from .representations import position_weighted_means, unit_rows
from .tokenization import Encoded

NEEDS_MODEL = ("ifd", *PERPLEXITY, "loss")


def random_scores(n_records: int, seed: int) -> np.ndarray:
    return np.random.default_rng(derived_seed(seed, RANDOM_STREAM)).random(n_records)


def response_alone(item: Encoded, start_id: int) -> Encoded:
    """The response tokens of `item` with only a start token before them."""
    ids = np.concatenate([[start_id], item.input_ids[item.response_mask]]).astype(np.int64)
    mask = np.ones(len(ids), dtype=bool)
    mask[0] = False
    return Encoded(ids, mask, item.truncated)


def start_token(tokenizer) -> int:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise GradfilterError("ifd needs a BOS or EOS token to score a response alone; "
                              "the proxy's tokenizer has neither")
    return int(start)


@torch.inference_mode()
def mean_nll(model: torch.nn.Module, encoded: Sequence[Encoded], batch_size: int,
             device: torch.device, dtype: torch.dtype, batch_tokens: int,
             on_batch=None, share_prefix: bool = True,
             on_tokens: Callable[[int], None] | None = None) -> np.ndarray:
    """Each example's mean cross-entropy over its response tokens, in `encoded`'s order
    (`forward_pass` without representations)."""
    return forward_pass(model, encoded, batch_size, device, dtype, batch_tokens, on_batch,
                        share_prefix, on_tokens)[0]


@torch.inference_mode()
def forward_pass(model: torch.nn.Module, encoded: Sequence[Encoded], batch_size: int,
                 device: torch.device, dtype: torch.dtype, batch_tokens: int,
                 on_batch=None, share_prefix: bool = True,
                 on_tokens: Callable[[int], None] | None = None,
                 represent: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Each example's mean cross-entropy over its response tokens and, with `represent`,
    `represent(its RDS+ representation)` (representations.py; [rows, hidden] -> [rows, K]),
    both in `encoded`'s order.

    Batches are cut longest first, as in a collection pass, so that each pads little, and run
    in micro-batches of at most `batch_tokens` padded tokens. With `share_prefix`, the tokens
    all examples start with run once (prefix.py). `on_tokens` hears how many tokens (unpadded)
    the pass ran. The representations come from the same forward as the losses.
    """
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    shared = shared_prefix_length(encoded) if share_prefix else 0
    prefix = None
    if shared:
        with autocast:
            prefix = PrefixCache.run(model.base_model, encoded[0].input_ids[:shared], device)
    if prefix is not None:
        encoded = without_prefix(encoded, shared)
    lengths = np.array([len(item.input_ids) for item in encoded], dtype=np.int64)
    if on_tokens is not None:
        on_tokens(int(lengths.sum()) + (prefix.length if prefix is not None else 0))
    batches = collection_batches(lengths, batch_size, bucketing=True)
    batcher = Batcher(encoded, device)
    results, kept = [], []
    for rows in batches:
        for part, width in micro_batches([rows], lengths, batch_tokens):
            batch = batcher.batch([rows[part]], width)
            with autocast:
                hidden = last_hidden(model, batch.input_ids, batch.attention_mask, prefix)
                results.append(per_example_losses(model, batch.input_ids, batch.attention_mask,
                                                  batch.response_mask, batch.targets, prefix,
                                                  hidden))
            if represent is not None:
                kept.append(represent(position_weighted_means(hidden, batch.attention_mask,
                                                              prefix)))
        if on_batch is not None:
            on_batch(len(rows))
    order = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    nll = np.empty(len(encoded), dtype=np.float64)
    if results:
        nll[order] = torch.cat(results).double().cpu().numpy()
    if represent is None:
        return nll, None
    values = torch.cat(kept).float().cpu().numpy() if kept else np.zeros((0, 0), np.float32)
    out = np.empty_like(values)
    out[order] = values
    return nll, out


def baseline_columns(method: str, encoded: Sequence[Encoded], scorable: np.ndarray,
                     n_records: int, seed: int, forward=None,
                     target: Sequence[Encoded] | None = None) -> dict[str, np.ndarray]:
    """The score columns of `method` over all records (NaN where unscorable).

    `forward` runs the proxy (for ifd and perplexity): a `ProxyForward`. With `target` (ifd
    only), the PPL(y|x) pass also gives RDS+'s cosines with the target examples: the `rds`
    and `rds_mean` columns (alignment.py).
    """
    def full(values: np.ndarray) -> np.ndarray:
        column = np.full(n_records, np.nan)
        column[scorable] = values
        return column

    if target is not None and method != "ifd":
        raise GradfilterError(f"target examples are for ifd's pass (RDS+), not {method}")
    if method == "random":
        return {"random": full(random_scores(n_records, seed)[scorable])}
    if method == "length":
        return {"length": full(np.array([encoded[i].n_response_tokens for i in scorable],
                                        dtype=np.float64))}
    if method not in NEEDS_MODEL:
        raise GradfilterError(f"unknown method {method!r}; choose gsnr or one of {BASELINES}")
    assert forward is not None
    items = [encoded[i] for i in scorable]
    if target is None:
        nll, rds = forward(items), {}
    else:
        nll, cosines = forward.with_target(items, target)
        rds = {name: full(values) for name, values in rds_scores(cosines).items()}
    if method == "loss":
        return {"loss": full(-nll)}
    conditional = np.exp(nll)
    columns = {"perplexity": full(conditional)}
    if method == "ifd":
        alone = np.exp(forward(items, response_only=True))
        ratio = conditional / alone
        columns["perplexity_response"] = full(alone)
        columns["ifd_ratio"] = full(ratio)
        columns["ifd"] = full(superfiltering_score(ratio))
    return {**columns, **rds}


class ProxyForward:
    """The `forward` of baseline_columns over a loaded proxy, with a progress bar per pass;
    `tokens` counts the tokens its passes ran (for the run record), `target_representations`
    holds the target examples' RDS+ representations once `with_target` has run."""

    def __init__(self, model, tokenizer, batch_size: int, device: torch.device,
                 dtype: torch.dtype, bars, batch_tokens: int) -> None:
        self.model, self.batch_size, self.bars = model, batch_size, bars
        self.device, self.dtype, self.batch_tokens = device, dtype, batch_tokens
        self.start_id = start_token(tokenizer)
        self.tokens = 0
        self.target_representations: np.ndarray | None = None

    def __call__(self, items: list[Encoded], response_only: bool = False) -> np.ndarray:
        if response_only:
            items = [response_alone(item, self.start_id) for item in items]
        name = "PPL(y) of the response alone" if response_only else "PPL(y|x)"
        return self._pass(name, items)[0]

    def with_target(self, items: list[Encoded],
                    target: Sequence[Encoded]) -> tuple[np.ndarray, np.ndarray]:
        """PPL(y|x)'s mean NLL of `items` and, from the same forward, the cosine of each one's
        RDS+ representation with each target example's ([items, targets], float32); the
        target examples' representations come first, from a pass of their own."""
        _, representations = self._pass("target examples (RDS+)", list(target),
                                         represent=lambda pooled: pooled)
        assert representations is not None
        self.target_representations = representations
        units = unit_rows(torch.from_numpy(representations).to(self.device)).T
        nll, cosines = self._pass("PPL(y|x) and RDS+", items,
                                  represent=lambda pooled: unit_rows(pooled) @ units)
        assert cosines is not None
        return nll, cosines.reshape(len(items), len(target))  # (0, targets) for no items

    def _pass(self, name: str, items: list[Encoded], represent=None
              ) -> tuple[np.ndarray, np.ndarray | None]:
        task = self.bars.add_task(name, total=len(items), rate="")
        started = time.perf_counter()
        return forward_pass(self.model, items, self.batch_size, self.device, self.dtype,
                            self.batch_tokens,
                            lambda rows: advance_bar(self.bars, task, rows, started),
                            on_tokens=self._count, represent=represent)

    def _count(self, tokens: int) -> None:
        self.tokens += tokens
