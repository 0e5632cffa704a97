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
accumulated signal, sampled from each forward's newest queries) with the count of those readings
(the (sequence, head, query) triples that see the token), by which the observation divides the mass.
The scores of those queries are computed once more for this (m x S per head, a fraction m / q of the
attention's work).

On the speed paths (``CompressedKVCache(path="speed")`` or ``"speed-bf16"``) the stored blocks sit in
the layer's stored groups g (``cache.py``), whose keys C_g^K = K_g U^K_g and values C_g^V = V_g U^V_g
are coefficients in the top-r columns of their bases, or rebuilt dense blocks where a side is not at
a rank level (then U = I below).  Each group is read in its own dtype (bfloat16 on "speed-bf16"), its
scores and outputs returned in the model's.  ``speed_attention`` computes one score matrix over every
stored token and reads each group in its coordinates:

    S = [Q K^T, (Q U^K_1) C_1^K^T, ...] * scaling + M,   P = softmax(S) = [P_0, P_1, ...]
    O = P_0 V + sum_g (P_g C_g^V) U^V_g^T

with K, V the dense part (sinks, window, new tokens).  It equals the memory path's output over the
rebuilt keys K_g U U^T and values V_g U U^T (up to rounding), at r instead of d numbers read per token
of a rank group.  The recorded log-normalizers, outputs and masses come from the same scores, so
decoding computes them once, not twice.  A forward of more than ``RECENT_QUERIES`` queries (a
prompt's block) would materialize a (g q x S) score matrix per K/V head there; it runs SDPA over the
groups rebuilt dense (C_g U_g^T, once per forward) instead, with the same output.
"""

from __future__ import annotations

import torch

from drrl_env.kv.cache import RECENT_QUERIES, CompressedLayer


def kv_attention(
    layer: CompressedLayer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
) -> torch.Tensor:
    """O (b, q, H, d) for ``query`` (b, H, q, d) over ``key``, ``value`` (b, H_kv, S, d); records as above."""
    if layer.speed:
        return speed_attention(layer, query, key, value, scaling)
    out, lse, mass, reads = fused_attention(query, key, value, scaling)
    layer.mass += mass
    layer.reads += reads
    record(layer, query, lse, out)
    return out.transpose(1, 2).contiguous()  # (b, q, H, d)


def fused_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SDPA's O (b, H, q, d) over ``key``, ``value`` (b, H_kv, S, d), whose last q entries are the queries'
    own tokens, and for the newest m = min(q, RECENT_QUERIES) queries their log-normalizers (b, H, m),
    the attention mass they give each key (S,), from their scores computed once more, and how many
    (sequence, head, query) triples of them see each key (S,)."""
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
    reads = visible[q - m :].sum(0) * (b * heads)  # (S,) the (sequence, head, query) triples that see each key
    return out, lse.reshape(b, heads, m), torch.exp(scores - lse).sum(dim=(0, 1, 2)), reads


def record(layer: CompressedLayer, query: torch.Tensor, lse: torch.Tensor, out: torch.Tensor) -> None:
    """Keeps the newest queries (b, H, q, d), their log-normalizers (b, H, m) and outputs (b, H, q, d)."""
    m = lse.shape[-1]
    layer.recent.add(query[:, :, -m:].detach(), lse, out[:, :, -m:].detach())


def speed_attention(
    layer: CompressedLayer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
) -> torch.Tensor:
    """The speed path's O (b, q, H, d) (module docstring): ``key``, ``value`` (b, H_kv, S, d) are the dense
    part, whose last q entries are the queries' own tokens; ``layer.groups`` holds the stored blocks.  A
    forward of more than ``RECENT_QUERIES`` queries (a prompt's block) runs SDPA over the groups rebuilt
    dense instead: the same output without a (g q x S) score matrix per K/V head."""
    b, heads, q, d = query.shape
    if q > RECENT_QUERIES:
        return rebuilt_attention(layer, query, key, value, scaling)
    kv_heads, stored = key.shape[1], key.shape[2]
    group = heads // kv_heads
    grouped = query.reshape(b, kv_heads, group * q, d)  # (b, H, q, d) -> (b, H_kv, g q, d): head h reads h // g
    positions = torch.arange(stored, device=query.device)
    visible = positions[None, :] <= (stored - q + torch.arange(q, device=query.device))[:, None]  # (q, S)
    parts = [grouped @ key.transpose(-1, -2)]  # (b, H_kv, g q, S)
    for stored_group in layer.groups.values():
        read = grouped.to(stored_group.keys.dtype)  # the group's dtype (bfloat16 on "speed-bf16")
        read = read if stored_group.key_basis is None else read @ stored_group.key_basis  # (b, H_kv, g q, r_k)
        parts.append((read @ stored_group.keys.transpose(-1, -2)).to(grouped.dtype))  # (b, H_kv, g q, n_g)
    sizes = [part.shape[-1] for part in parts]
    scores = torch.cat(parts, dim=-1).float() * scaling  # (b, H_kv, g q, S + sum n_g)
    scores[..., :stored] = scores[..., :stored].masked_fill(~visible.repeat(group, 1), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # (b, H_kv, g q, 1)
    probs = torch.exp(scores - lse).to(value.dtype).split(sizes, dim=-1)
    out = probs[0] @ value  # (b, H_kv, g q, d)
    for part, stored_group in zip(probs[1:], layer.groups.values()):
        read = part.to(stored_group.values.dtype) @ stored_group.values  # (b, H_kv, g q, r_v or d)
        read = read if stored_group.value_basis is None else read @ stored_group.value_basis.transpose(-1, -2)
        out = out + read.to(out.dtype)
    out = out.reshape(b, heads, q, d)  # (b, H_kv, g q, d) -> (b, H, q, d)
    m = min(q, RECENT_QUERIES)
    recent = probs[0].reshape(b, kv_heads, group, q, stored)[:, :, :, q - m :]  # (b, H_kv, g, m, S)
    layer.mass += recent.float().sum(dim=(0, 1, 2, 3))
    layer.reads += visible[q - m :].sum(0) * (b * heads)
    lse = lse.reshape(b, kv_heads, group, q)[..., q - m :].reshape(b, heads, m)  # (b, H_kv, g, m) -> (b, H, m)
    record(layer, query, lse, out)
    return out.transpose(1, 2).contiguous()  # (b, q, H, d)


def rebuilt_attention(
    layer: CompressedLayer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
) -> torch.Tensor:
    """The speed path's O (b, q, H, d) by SDPA over the stored groups rebuilt dense (C_g U_g^T), then the
    dense part ``key``, ``value`` (b, H_kv, S, d); records as the memory path does, the masses of the
    dense part only (a stored token's mass is no longer read: it is decided)."""
    keys, values = [key], [value]
    for stored_group in layer.groups.values():
        k, v = (x.to(key.dtype) for x in (stored_group.keys, stored_group.values))  # (b, H_kv, n, r or d)
        for rebuilt, stored, basis in ((keys, k, stored_group.key_basis), (values, v, stored_group.value_basis)):
            rebuilt.insert(-1, stored if basis is None else stored @ basis.to(key.dtype).transpose(-1, -2))
    out, lse, mass, reads = fused_attention(query, torch.cat(keys, dim=-2), torch.cat(values, dim=-2), scaling)
    layer.mass += mass[-key.shape[-2] :]
    layer.reads += reads[-key.shape[-2] :]
    record(layer, query, lse, out)
    return out.transpose(1, 2).contiguous()  # (b, q, H, d)
