"""FLOP counts of attention at a rank, and of an observation's features: what the analytic cost model
charges, and what the measured models are compared with.  Reads an ``AttentionShape``'s fields only,
so the cost-model base class can default to it without an import cycle."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from drrl_env.attention.methods.base import SOFTMAX_FLOPS, LowRankMethod

if TYPE_CHECKING:
    from drrl_env.costs.base import AttentionShape


def attention_flops(
    method: LowRankMethod,
    rank: int,
    *,
    query_len: int,
    key_len: int,
    head_dim: int,
    n_heads: int,
    n_kv_heads: int,
    compress_values: bool,
    causal: bool,
) -> int:
    """Floating-point operations to compute one segment's attention output at ``rank``.

    Exact attention (rank == head_dim): per head 2TNd (scores) + 5TN (softmax) + 2TNd (A V).
    Low rank, per query head: the method's query-side work and score product
    (``LowRankMethod.query_side_flops``), softmax and A V (``output_side_flops``: 5TN + 2TNd; with
    ``compress_values`` 5TN + 2TNr + 2Trd).  Per key/value head, the upkeep of the keys'
    factorization (and the values' when compressed): ``LowRankMethod.upkeep_flops`` (for
    SVD-based methods the streaming update and re-projection; for calibrated bases the projection
    of the segment's new rows).
    """
    t, n, d, r = query_len, key_len, head_dim, rank
    if not 1 <= r <= d:
        raise ValueError(f"rank {r} must lie in 1..{d}")
    if r == d:
        return n_heads * (4 * t * n * d + SOFTMAX_FLOPS * t * n)
    per_q_head = method.query_side_flops(r, t, n, d) + method.output_side_flops(r, t, n, d, compress_values)
    per_kv_head = method.upkeep_flops(r, t, n, d, causal) * (2 if compress_values else 1)
    return round(n_heads * per_q_head + n_kv_heads * per_kv_head)


def feature_flop_ratio(shape: AttentionShape) -> float:
    """FLOPs of the observation's features for the segment (``LowRankMethod.feature_flops``: paid at
    every step, whatever rank is chosen) / FLOPs of exact attention."""
    per_query, per_kv = shape.method.feature_flops(shape.query_len, shape.key_len, shape.head_dim, shape.causal)
    exact = attention_flops(
        shape.method,
        shape.head_dim,
        query_len=shape.query_len,
        key_len=shape.key_len,
        head_dim=shape.head_dim,
        n_heads=shape.n_heads,
        n_kv_heads=shape.n_kv_heads,
        compress_values=shape.compress_values,
        causal=shape.causal,
    )
    return (shape.n_heads * per_query + shape.n_kv_heads * per_kv) / exact


def flop_ratios(shape: AttentionShape) -> np.ndarray:
    """(R,) FLOPs at each rank / FLOPs of exact attention."""
    flops = [
        attention_flops(
            shape.method,
            r,
            query_len=shape.query_len,
            key_len=shape.key_len,
            head_dim=shape.head_dim,
            n_heads=shape.n_heads,
            n_kv_heads=shape.n_kv_heads,
            compress_values=shape.compress_values,
            causal=shape.causal,
        )
        for r in shape.ranks
    ]
    return np.asarray(flops, dtype=np.float64) / flops[-1]
