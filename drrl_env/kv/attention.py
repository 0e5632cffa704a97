"""Attention over a ``CompressedKVCache``: the one function that the KV environment's forward, its
reward and ``drrl generate`` run.

For queries Q (b, H, q, d) of the newest q tokens and the layer's stored keys and values
(b, H_kv, S, d), whose last q entries are those tokens' own:

    O = softmax(Q K^T * scaling + M) V        (PyTorch's SDPA, grouped-query heads read in place)

with M = -inf where a new token would see a later new token (every stored token precedes the
queries).  Besides O it records, in the layer, what the observation of the next leaving block
reads, from the newest ``RECENT_QUERIES`` queries only (all of them when decoding one token at a
time): their scores' log-normalizers lse = logsumexp(Q_m K^T * scaling + M), their outputs, and the
attention mass they give each stored token (summed over batch, heads and those queries: H2O's
accumulated signal, sampled from each forward's newest queries).  The scores of those queries are
computed once more for this (m x S per head, a fraction m / q of the attention's work).
"""

from __future__ import annotations

import torch

from drrl_env.kv.cache import RECENT_QUERIES, CompressedLayer


def kv_attention(
    layer: CompressedLayer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
) -> torch.Tensor:
    """O (b, q, H, d) for ``query`` (b, H, q, d) over ``key``, ``value`` (b, H_kv, S, d); records as above."""
    b, heads, q, d = query.shape
    kv_heads, stored = key.shape[1], key.shape[2]
    group = heads // kv_heads
    positions = torch.arange(stored, device=query.device)
    visible = positions[None, :] <= (stored - q + torch.arange(q, device=query.device))[:, None]  # (q, S)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=visible, scale=scaling, enable_gqa=group > 1
    )  # (b, H, q, d)
    m = min(q, RECENT_QUERIES)
    recent = query[:, :, q - m :].reshape(b, kv_heads, group * m, d)  # (b, H_kv, g m, d)
    scores = (recent @ key.transpose(-1, -2)).float() * scaling  # (b, H_kv, g m, S)
    scores = scores.masked_fill(~visible[q - m :].repeat(group, 1), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # (b, H_kv, g m, 1)
    layer.mass += torch.exp(scores - lse).sum(dim=(0, 1, 2))
    layer.recent.add(query[:, :, q - m :].detach(), lse.reshape(b, heads, m), out[:, :, q - m :].detach())
    return out.transpose(1, 2).contiguous()  # (b, q, H, d)
