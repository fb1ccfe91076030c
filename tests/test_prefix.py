"""A forward-only pass runs the prefix all examples share once (scoring/prefix.py): the losses
equal one whole forward per example (HF's own loss), for GPT-2 and Llama, whole batches and
micro-batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradfilter.scoring.baselines import mean_nll
from gradfilter.scoring.prefix import MIN_SHARED_TOKENS, PrefixCache, shared_prefix_length
from gradfilter.scoring.proxy import load_model
from gradfilter.scoring.tokenization import Encoded


def _item(ids: list[int], response_from: int) -> Encoded:
    mask = np.zeros(len(ids), dtype=bool)
    mask[response_from:] = True
    return Encoded(np.array(ids, dtype=np.int64), mask, truncated=False)


def test_the_prefix_stops_where_a_prediction_is_needed():
    head = list(range(10, 20))
    assert shared_prefix_length([_item([*head, 1, 2, 3], 11), _item([*head, 4, 5], 11)]) == 10
    # a response starting at token 8 needs position 7's prediction: the prefix stops at 7
    assert shared_prefix_length([_item([*head, 1, 2], 8), _item([*head, 4], 11)]) == 7
    assert shared_prefix_length([_item([*head, 1], 11), _item([9, *head], 11)]) == 0
    short = head[:MIN_SHARED_TOKENS - 1]
    assert shared_prefix_length([_item([*short, 1, 2], 4), _item([*short, 3, 4], 4)]) == 0


def _reference(model, item: Encoded) -> float:
    labels = np.where(item.response_mask, item.input_ids, -100)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(item.input_ids)[None],
                    labels=torch.from_numpy(labels)[None])
    return float(out.loss)


@pytest.mark.parametrize("proxy", ["gpt2_proxy", "llama_proxy"])
@pytest.mark.parametrize("batch_tokens", [10_000, 40])
def test_running_the_shared_prefix_once_changes_no_loss(request, proxy, batch_tokens):
    model = load_model(request.getfixturevalue(proxy), torch.device("cpu")).eval()
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    head = rng.integers(5, vocab, 17).tolist()
    items = []
    for k in range(9):
        prompt = rng.integers(5, vocab, 1 + k % 4).tolist()
        answer = rng.integers(5, vocab, 2 + (5 * k) % 11).tolist()
        items.append(_item(head + prompt + answer, len(head) + len(prompt)))
    assert shared_prefix_length(items) == len(head)
    nll = mean_nll(model, items, 4, torch.device("cpu"), torch.float32, batch_tokens)
    whole = mean_nll(model, items, 4, torch.device("cpu"), torch.float32, batch_tokens,
                     share_prefix=False)
    reference = [_reference(model, item) for item in items]
    np.testing.assert_allclose(nll, reference, rtol=1e-5)
    np.testing.assert_allclose(whole, reference, rtol=1e-5)


def test_the_token_count_is_what_the_pass_ran(gpt2_proxy, monkeypatch):
    """The run record's forward_tokens: the prefix once where it is shared, every row whole
    where the model gives no copyable cache (PrefixCache.run falls back)."""
    model = load_model(gpt2_proxy, torch.device("cpu")).eval()
    head = list(range(10, 20))
    items = [_item([*head, 30 + k, 40, 41, 42][:12 + k % 3], 11) for k in range(5)]
    whole = sum(len(item.input_ids) for item in items)

    def tokens_run(**kwargs) -> int:
        counted = []
        mean_nll(model, items, 4, torch.device("cpu"), torch.float32, 10_000,
                 on_tokens=counted.append, **kwargs)
        return sum(counted)

    assert tokens_run() == whole - (len(items) - 1) * len(head)
    assert tokens_run(share_prefix=False) == whole
    monkeypatch.setattr(PrefixCache, "run", classmethod(lambda cls, *args: None))
    assert tokens_run() == whole
