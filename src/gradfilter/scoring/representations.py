"""RDS+'s representation of an example (method.md §6, `rds`): the position-weighted mean of
the proxy's last hidden states over the whole sequence,

    e = sum_{i=1..L} w_i h_i,    w_i = i / (1 + 2 + ... + L) = 2i / (L (L + 1)),

h_i the last layer's hidden state (after the final norm) at position i of the L tokens the
proxy reads (prompt and response as the template renders them, after --max-length), so later
tokens, which have read more of the sequence, count more. This is the `weighted_mean` pooling
of the authors' code (after SGPT, arXiv 2202.08904) that RDS+ (Ivison et al., arXiv 2503.01807)
takes from an untrained base model. It is computed from the hidden states the IFD pass's
PPL(y|x) forward makes anyway: no extra forward over the pool.
"""

from __future__ import annotations

import torch

from .prefix import PrefixCache


def position_weighted_means(hidden: torch.Tensor, attention_mask: torch.Tensor,
                            prefix: PrefixCache | None = None) -> torch.Tensor:
    """[rows, hidden] float32 RDS+ representations of right-padded rows ([rows, width,
    hidden] last hidden states, [rows, width] attention mask). With `prefix`, the rows follow
    that shared prefix: their positions start after it, and its own weighted hidden states
    (`prefix.position_sum`) join every row's sum. Elementwise in float32, so that autocast
    leaves it alone."""
    mask = attention_mask.to(torch.float32)
    offset = prefix.length if prefix is not None else 0
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=torch.float32)
    weights = (positions + offset)[None, :] * mask  # 0 at padding
    sums = (weights[:, :, None] * hidden.to(torch.float32)).sum(dim=1)
    if prefix is not None and offset:
        assert prefix.position_sum is not None
        sums = sums + prefix.position_sum.to(sums.device)[None, :]
    lengths = mask.sum(dim=1) + offset
    return sums / (lengths * (lengths + 1) / 2)[:, None]


def unit_rows(vectors: torch.Tensor) -> torch.Tensor:
    """Rows scaled to length 1; zero rows stay zero."""
    norms = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    return vectors / torch.where(norms > 0, norms, torch.ones_like(norms))
