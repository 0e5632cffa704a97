"""Attention kernels that compute the scores from rank-r factors, and their FLOP counts.

Shapes: queries of one segment (..., T, d); keys and values the segment may attend to
(..., N, d); ``mask`` (T, N) boolean, True where attention is allowed, or None.

The full-size Q and K are never rebuilt: the scores come from r-dimensional query and key factors,

    "svd":        S_r = s (U^Q_r S^Q_r V^Q_r^T V^K_r) (U^K_r S^K_r)^T        (T x r)(r x N)
    "shared_key": S_r = s (Q V^K_r) (U^K_r S^K_r)^T                          (T x r)(r x N)

where X = U^X S^X V^X^T is the SVD and the subscript r keeps the top r triplets.  The output is
softmax(S_r) V, or with ``compress_values`` softmax(S_r) (U^V_r S^V_r) V^V_r^T: the (T x N) weights
meet an (N x r) factor, so A V costs 2TNr + 2Trd instead of 2TNd.  ``rank == head_dim`` means
exact attention.

Exact and low-rank attention both run through PyTorch's fused ``scaled_dot_product_attention``
(on factors of width r for low rank), the kernel a model runs, so that a measured latency
compares like with like.  The fused CPU kernel needs queries, keys and values of one width: with
``compress_values`` (width r throughout) low rank runs fused; without it (values of width d)
PyTorch falls back to its unfused math path, which materializes the T x N scores.
"""

from __future__ import annotations

import torch

from drrl_env.linalg import Factors

METHODS = ("svd", "shared_key")
EIGH_FLOPS_PER_D3 = 9  # symmetric d x d eigendecomposition ~ 9 d^3 flops (tridiagonal QR, textbook estimate)
SOFTMAX_FLOPS = 5  # max, subtract, exp, sum, divide per score


def causal_mask(start: int, stop: int, n_keys: int, device: torch.device | None = None) -> torch.Tensor:
    """(stop - start, n_keys) boolean mask: query at absolute position i sees keys j <= i."""
    rows = torch.arange(start, stop, device=device)[:, None]
    return torch.arange(n_keys, device=device)[None, :] <= rows


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: torch.Tensor | float,
           mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(scaling * query keys^T) values, masked entries excluded, by the fused kernel.

    query (..., T, e), keys (..., N, e), values (..., N, f) -> (..., T, f); ``scaling`` a float
    or a tensor broadcasting against query (e.g. one factor per layer).  Inputs with fewer than
    four dims get leading dims of one: PyTorch's fused CPU kernels take (batch, heads, T, e) only.
    """
    if isinstance(scaling, torch.Tensor):
        query, scaling = query * scaling.to(query.dtype), 1.0  # per-layer factors: fold into the query
    lead = query.dim()
    query, keys, values = (x.reshape((1,) * (4 - x.dim()) + x.shape) for x in (query, keys, values))
    out = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scaling)
    return out.reshape(out.shape[4 - lead:]) if lead < 4 else out


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: torch.Tensor | float,
                   mask: torch.Tensor | None) -> torch.Tensor:
    """Exact attention.  q (..., T, d), k, v (..., N, d) -> (..., T, d)."""
    return attend(q, k, v, scaling, mask)


def low_rank_query_key(q: torch.Tensor, k_factors: Factors, rank: int, method: str,
                       q_factors: Factors | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Width-r query and key factors whose product is the low-rank score matrix (module docstring).

    q (..., T, d) -> ((..., T, r), (..., N, r)); ``q_factors`` reuses the query SVD (method "svd").
    """
    k_left, k_right = k_factors.truncate(rank)  # (..., N, r), (..., r, d)
    if method == "svd":
        q_left, q_right = (q_factors or Factors.of(q)).truncate(rank)  # (..., T, r), (..., r, d)
        return q_left @ (q_right @ k_right.transpose(-1, -2)), k_left  # (..., T, r) @ (..., r, r)
    if method == "shared_key":
        return q @ k_right.transpose(-1, -2), k_left  # (..., T, d) @ (..., d, r)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def low_rank_attention(q: torch.Tensor, k_factors: Factors, values: torch.Tensor, scaling: torch.Tensor | float,
                       mask: torch.Tensor | None, rank: int, method: str, *, v_factors: Factors | None = None,
                       q_factors: Factors | None = None) -> torch.Tensor:
    """One segment's attention at ``rank`` < head_dim.  q (..., T, d), values (..., N, d) -> (..., T, d).

    ``v_factors`` compresses the values to rank r as well; ``q_factors`` reuses a segment's
    query SVD (method "svd") when several ranks are evaluated.
    """
    query, keys = low_rank_query_key(q, k_factors, rank, method, q_factors)
    if v_factors is None:
        return attend(query, keys, values, scaling, mask)
    v_left, v_right = v_factors.truncate(rank)  # (..., N, r), (..., r, d)
    return attend(query, keys, v_left, scaling, mask) @ v_right  # (..., T, r) @ (..., r, d)


def attention_flops(method: str, rank: int, *, query_len: int, key_len: int, head_dim: int,
                    n_heads: int, n_kv_heads: int, compress_values: bool, causal: bool) -> int:
    """Floating-point operations to compute one segment's attention output at ``rank``.

    Exact attention (rank == head_dim): per head 2TNd (scores) + 5TN (softmax) + 2TNd (A V).
    Low rank, per query head: the score product (svd: 2Tr^2 + 2r^2 d + 2TNr; shared_key: 2TNr),
    softmax, A V (2TNd; with ``compress_values`` 2TNr + 2Trd) and the query-side factor work of
    the segment (svd: Gram 2Td^2, eigendecomposition 9d^3, factor Q V_r 2Tdr; shared_key:
    projection 2Tdr).  Per key/value head, the key factorization (and the values' when
    compressed): causal, it is updated as the segment's T keys arrive (Gram update 2Td^2,
    eigendecomposition 9d^3, re-projecting the N keys 2Ndr); non-causal, it is computed once
    for all N keys (2Nd^2 + 9d^3 + 2Ndr) and the segment is charged its share T/N.
    """
    t, n, d, r = query_len, key_len, head_dim, rank
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if not 1 <= r <= d:
        raise ValueError(f"rank {r} must lie in 1..{d}")
    if r == d:
        return n_heads * (4 * t * n * d + SOFTMAX_FLOPS * t * n)
    eig = EIGH_FLOPS_PER_D3 * d ** 3
    if method == "svd":
        per_q_head = (2 * t * d * d + eig + 2 * t * d * r) + (2 * t * r * r + 2 * r * r * d + 2 * t * n * r)
    else:
        per_q_head = 2 * t * d * r + 2 * t * n * r
    per_q_head += SOFTMAX_FLOPS * t * n + (2 * t * n * r + 2 * t * r * d if compress_values else 2 * t * n * d)
    if causal:
        factorization = 2 * t * d * d + eig + 2 * n * d * r
    else:
        factorization = (2 * n * d * d + eig + 2 * n * d * r) * t / n
    per_kv_head = factorization * (2 if compress_values else 1)
    return round(n_heads * per_q_head + n_kv_heads * per_kv_head)
