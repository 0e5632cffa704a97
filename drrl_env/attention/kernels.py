"""Attention kernels shared by every method: the causal mask and PyTorch's fused attention.

Shapes: queries of one segment (..., T, e); keys and values the segment may attend to (..., N, e)
and (..., N, f); ``mask`` (T, N) boolean, True where attention is allowed, or None.

Exact and low-rank attention both run through PyTorch's fused ``scaled_dot_product_attention``
(low rank on factors of width r), the kernel a model runs, so that a measured latency compares
like with like.  The fused CPU kernel needs queries, keys and values of one width: with
``compress_values`` (width r throughout) low rank runs fused; without it (values of width d)
PyTorch falls back to its unfused math path, which materializes the T x N scores.
"""

from __future__ import annotations

import torch


def causal_mask(start: int, stop: int, n_keys: int, device: torch.device | None = None) -> torch.Tensor:
    """(stop - start, n_keys) boolean mask: query at absolute position i sees keys j <= i."""
    rows = torch.arange(start, stop, device=device)[:, None]
    return torch.arange(n_keys, device=device)[None, :] <= rows


def attend(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scaling: torch.Tensor | float,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """softmax(scaling * query keys^T) values, masked entries excluded, by the fused kernel.

    query (..., T, e), keys (..., N, e), values (..., N, f) -> (..., T, f); ``scaling`` a float
    or a tensor broadcasting against query (e.g. one factor per layer).  Inputs with fewer than
    four dims get leading dims of one: PyTorch's fused CPU kernels take (batch, heads, T, e) only.
    Keys and values may have fewer heads than the query (grouped-query attention: query head h
    reads K/V head h // group), which the kernel reads in place (``enable_gqa``) instead of copying.
    """
    if isinstance(scaling, torch.Tensor):
        query, scaling = query * scaling.to(query.dtype), 1.0  # per-layer factors: fold into the query
    lead = query.dim()
    query, keys, values = (x.reshape((1,) * (4 - x.dim()) + x.shape) for x in (query, keys, values))
    out = torch.nn.functional.scaled_dot_product_attention(
        query, keys, values, attn_mask=mask, scale=scaling, enable_gqa=keys.shape[1] != query.shape[1]
    )
    return out.reshape(out.shape[4 - lead :]) if lead < 4 else out


def full_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: torch.Tensor | float, mask: torch.Tensor | None
) -> torch.Tensor:
    """Exact attention.  q (..., T, d), k, v (..., N, d) -> (..., T, d)."""
    return attend(q, k, v, scaling, mask)
