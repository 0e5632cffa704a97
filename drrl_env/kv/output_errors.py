"""How much storing one block of one layer at one level changes the attention output of every later query,
exactly within that layer, on the exact run: the features of the fast mode (``fast.py``).

A search-time artefact, privileged: it reads the whole document's queries, which a deployed policy never
sees.  For layer l and decided block s, take the queries t that read the block stored (every t from
W + B (s + 1) on), their exact-run normalizer lse_t and output o_t, and on the block's tokens j the
weights p_j = exp(q_t . k_j * scaling - lse_t).  Storing the block at level r gives

    keys at r:    o'_t = (o_t - sum_j p_j v_j + sum_j p'_j v_j) / (1 - sum_j p_j + sum_j p'_j)   (p' from rebuilt keys)
    values at r:  o'_t = o_t + sum_j p_j (v'_j - v_j)
    evicted:      o'_t = (o_t - sum_j p_j v_j) / (1 - sum_j p_j)

and ``D[s, l, kind, r, u]`` is the sum over step u's queries and all heads of ||o'_t - o_t||^2 (the evict
column holds the evicted value for both kinds; the exact column is 0).  Each change is taken alone,
every other block and layer exact: how they interact is what the fast mode's fit and its check against
the closed loop measure.
"""

from __future__ import annotations

import numpy as np
import torch

from drrl_env.kv.bases import KVBases
from drrl_env.kv.levels import Evict, Exact, Level
from drrl_env.sources.base import AttentionTrace


def decided_blocks(length: int, window: int, block: int, sinks: int) -> list[tuple[int, int]]:
    """[start, stop) of the blocks an episode of ``length`` tokens decides, in step order (sinks excluded)."""
    steps = max(0, -(-(length - 1 - window - block) // block))
    return [(max(s * block, sinks), (s + 1) * block) for s in range(steps)]


@torch.no_grad()
def output_errors(
    trace: AttentionTrace,
    bases: KVBases,
    ladder: tuple[Level, ...],
    block: int,
    window: int,
    sinks: int,
    angles: tuple[torch.Tensor, torch.Tensor] | None,
) -> np.ndarray:
    """``D`` (steps, Ly, 2, R, steps) of the module docstring for a document's exact ``trace``; ``angles``
    (cos, sin) (L, d) of every position for pre-RoPE bases."""
    length = trace.seq_len
    blocks = decided_blocks(length, window, block, sinks)
    steps, n_layers = len(blocks), trace.keys.shape[0]
    step_of = torch.div(
        torch.arange(length - 1, device=trace.keys.device) - window - block, block, rounding_mode="floor"
    )  # (T,) -1: prompt
    errors = np.zeros((steps, n_layers, 2, len(ladder), steps))
    for layer in range(n_layers):
        query, keys, values = trace.queries[layer, :, :-1], trace.keys[layer, :, :-1], trace.values[layer, :, :-1]
        scaling = float(trace.scaling[layer])
        kv_heads, group = keys.shape[0], query.shape[0] // keys.shape[0]
        out = torch.nn.functional.scaled_dot_product_attention(
            query, keys, values, is_causal=True, scale=scaling, enable_gqa=group > 1
        )  # (H, T, d)
        lse = _causal_lse(query, keys, scaling)  # (H, T)
        for s, (start, stop) in enumerate(blocks):
            first = window + block * (s + 1)  # the first query that reads block s stored
            q = query[:, first:].reshape(kv_heads, group * (length - 1 - first), -1)  # (H_kv, g Tq, d)
            o = out[:, first:].reshape(kv_heads, group * (length - 1 - first), -1)
            z = lse[:, first:].reshape(kv_heads, -1, 1)  # (H_kv, g Tq, 1)
            k, v = keys[:, start:stop], values[:, start:stop]  # (H_kv, n, d)
            weights = torch.exp(q @ k.transpose(-1, -2) * scaling - z)  # (H_kv, g Tq, n)
            mass, read = weights.sum(-1, keepdim=True), weights @ v  # (H_kv, g Tq, 1), (H_kv, g Tq, d)
            owner = step_of[first:].repeat(group)  # (g Tq,) the step of each query row
            part = None if angles is None else (angles[0][start:stop], angles[1][start:stop])
            for r, level in enumerate(ladder):
                if isinstance(level, Exact):
                    continue
                if isinstance(level, Evict):
                    change = (o - read) / (1 - mass).clamp_min(1e-6) - o
                    errors[s, layer, :, r] = _per_step(change, owner, steps)
                    continue
                rebuilt = torch.exp(q @ bases.rebuild_keys(layer, k, level, part).transpose(-1, -2) * scaling - z)
                change = (o - read + rebuilt @ v) / (1 - mass + rebuilt.sum(-1, keepdim=True)) - o
                errors[s, layer, 0, r] = _per_step(change, owner, steps)
                change = weights @ (bases.rebuild_values(layer, v, level) - v)
                errors[s, layer, 1, r] = _per_step(change, owner, steps)
    return errors


def _per_step(change: torch.Tensor, owner: torch.Tensor, steps: int) -> np.ndarray:
    """(steps,) sum of ||change||^2 (H_kv, rows, d) over heads and the rows of each step."""
    energy = change.square().sum(-1).sum(0)  # (rows,)
    return (
        torch.zeros(steps, dtype=torch.float64, device=owner.device).index_add_(0, owner, energy.double()).cpu().numpy()
    )


def _causal_lse(query: torch.Tensor, keys: torch.Tensor, scaling: float, chunk: int = 512) -> torch.Tensor:
    """(H, T) log-normalizer of each query's causal scores, computed ``chunk`` queries at a time."""
    heads, length, _ = query.shape
    full = keys.repeat_interleave(heads // keys.shape[0], 0)  # (H, T, d)
    parts = []
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        scores = query[:, start:stop] @ full[:, :stop].transpose(-1, -2) * scaling  # (H, c, stop)
        hidden = (
            torch.arange(stop, device=query.device)[None, :] > torch.arange(start, stop, device=query.device)[:, None]
        )
        parts.append(torch.logsumexp(scores.masked_fill(hidden, float("-inf")), dim=-1))
    return torch.cat(parts, dim=1)
