"""Attention over a ``CompressedKVCache``: the one function that the KV environment's forward, its
reward and ``drrl generate`` run.

For queries Q (b, H, q, d) of the newest q tokens and the layer's stored keys and values
(b, H_kv, S, d), whose last q entries are those tokens' own:

    A = softmax(Q K^T * scaling + M),  O = A V,  lse = logsumexp(Q K^T * scaling + M)

with M = -inf where a new token would see a later new token (every stored token precedes the
queries).  Grouped-query heads read their K/V head in place (no expansion).  Besides O it records,
in the layer, the attention mass every stored token received (summed over batch, heads and
queries) and the queries with their lse and outputs (``RecentQueries``): what the observation of
the next leaving block reads.  Queries are processed in chunks of ``CHUNK`` to bound memory.
"""

from __future__ import annotations

import torch

from drrl_env.kv.cache import CompressedLayer

CHUNK = 256


def kv_attention(
    layer: CompressedLayer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
) -> torch.Tensor:
    """O (b, q, H, d) for ``query`` (b, H, q, d) over ``key``, ``value`` (b, H_kv, S, d); records as above."""
    b, heads, q, d = query.shape
    kv_heads, stored = key.shape[1], key.shape[2]
    group = heads // kv_heads
    outputs, lses = [], []
    mass = torch.zeros(stored, device=query.device, dtype=torch.float32)
    for begin in range(0, q, CHUNK):
        end = min(q, begin + CHUNK)
        chunk = query[:, :, begin:end].reshape(b, kv_heads, group * (end - begin), d)  # (b, H_kv, g c, d)
        scores = (chunk @ key.transpose(-1, -2)).float() * scaling  # (b, H_kv, g c, S)
        # query i of the new tokens sees stored entries up to S - q + i
        rows = torch.arange(begin, end, device=query.device).repeat(group)  # (g c,)
        visible = torch.arange(stored, device=query.device)[None, :] <= (stored - q + rows)[:, None]  # (g c, S)
        scores = scores.masked_fill(~visible, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # (b, H_kv, g c, 1)
        probs = torch.exp(scores - lse)
        mass += probs.sum(dim=(0, 1, 2))
        out = (probs.to(value.dtype) @ value).reshape(b, heads, end - begin, d)  # (b, H, c, d)
        outputs.append(out)
        lses.append(lse.reshape(b, heads, end - begin))
    out = torch.cat(outputs, dim=2)  # (b, H, q, d)
    layer.mass += mass
    layer.recent.add(query.detach(), torch.cat(lses, dim=2), out.detach())
    return out.transpose(1, 2).contiguous()  # (b, q, H, d)
