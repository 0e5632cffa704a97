"""The segment loop: what each decision's attention sees, for the reward, the model forward and the timer.

A workload cuts a sequence into segments and yields, per segment, a :class:`SegmentView`: the
segment's queries, the keys and values it may attend to (expanded from K/V heads to query heads
under grouped-query attention), the mask, and the key and value factorizations, computed on first
use.  ``SegmentView.attention(rank, ...)`` is the one place where a segment's attention is computed
at a rank: ``analysis.py`` (the reward's fidelity and bounds), ``sources/hf_attention.py`` (the
low-rank model forward: end-of-episode fidelity and measured attention latency) and
``costs/latency.py`` (the latency profile) all go through it, so what is rewarded is what is run
and what is timed.

:class:`Prefill` is today's workload: the whole document is processed at once, segment by segment.
Bidirectional: every segment sees all keys, factored once.  Causal: segment [a, b) sees keys
[0, b); the K and V factorizations follow the prefix by streaming Gram updates
(``linalg.StreamingFactors``).  Tensors may carry leading dims (e.g. layers) before the head dim:
queries (..., H, L, d), keys and values (..., H_kv, L, d).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import torch

from drrl_env.attention import linalg
from drrl_env.attention.kernels import causal_mask, full_attention
from drrl_env.attention.linalg import Factors
from drrl_env.attention.methods.base import LowRankMethod


def segment_bounds(seq_len: int, segment_len: int) -> list[tuple[int, int]]:
    """Cut 0..seq_len into segments of ``segment_len``; a last piece shorter than half a
    segment joins the one before it."""
    starts = list(range(0, seq_len, segment_len))
    if len(starts) > 1 and seq_len - starts[-1] < segment_len / 2:
        starts.pop()
    return [(a, b) for a, b in zip(starts, starts[1:] + [seq_len])]


class KeySide:
    """The keys and values visible to a segment (a snapshot of the streams), factored on first use
    and expanded to query heads with ``kv_index`` (H,)."""

    def __init__(self, keys: linalg.StreamingFactors, values: linalg.StreamingFactors, kv_index: torch.Tensor) -> None:
        self._key_rows, self._key_gram = keys.rows, keys.gram  # (..., H_kv, N, d), (..., H_kv, d, d)
        self._value_rows, self._value_gram = values.rows, values.gram
        self.kv_index = kv_index

    @cached_property
    def keys(self) -> torch.Tensor:
        """(..., H, N, d)"""
        return self._key_rows.index_select(-3, self.kv_index)

    @cached_property
    def values(self) -> torch.Tensor:
        """(..., H, N, d)"""
        return self._value_rows.index_select(-3, self.kv_index)

    @cached_property
    def key_factors(self) -> Factors:
        return Factors.from_gram(self._key_rows, self._key_gram).select_heads(self.kv_index)

    @cached_property
    def value_factors(self) -> Factors:
        return Factors.from_gram(self._value_rows, self._value_gram).select_heads(self.kv_index)

    @cached_property
    def value_norm(self) -> torch.Tensor:
        """(..., H) ||V - 1 mu^T||_2, the centered spectral norm of each head's values."""
        return linalg.centered_spectral_norm(self._value_rows).index_select(-1, self.kv_index)

    @property
    def key_len(self) -> int:
        return self._key_rows.shape[-2]


@dataclass(frozen=True)
class SegmentView:
    """One segment's attention problem: queries (..., H, T, d) at positions [start, stop), the
    visible keys and values (``side``), and the mask (T, N) or None."""

    start: int
    stop: int
    queries: torch.Tensor
    side: KeySide
    mask: torch.Tensor | None

    def attention(self, rank: int, method: LowRankMethod, scaling: torch.Tensor | float, compress_values: bool,
                  q_factors: Factors | None = None) -> torch.Tensor:
        """The segment's attention output (..., H, T, d) at ``rank`` (head_dim = exact attention).

        ``q_factors``: ``Factors.of(queries)`` when the caller has it (reused by methods that factor
        the queries).
        """
        side = self.side
        if rank >= self.queries.shape[-1]:
            return full_attention(self.queries, side.keys, side.values, scaling, self.mask)
        return method.attention(self.queries, side.key_factors, side.values, scaling, self.mask, rank,
                                v_factors=side.value_factors if compress_values else None, q_factors=q_factors)


class Prefill:
    """The whole sequence at once, segment by segment (module docstring)."""

    name = "prefill"

    def __init__(self, segment_len: int) -> None:
        self.segment_len = segment_len

    def segments(self, seq_len: int) -> list[tuple[int, int]]:
        return segment_bounds(seq_len, self.segment_len)

    def views(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, causal: bool,
              segments: list[tuple[int, int]] | None = None) -> Iterator[SegmentView]:
        """A view per segment (default: :meth:`segments` of the key length).

        queries (..., H, T, d) are the *last* T positions of the key sequence (..., H_kv, L, d):
        T = L in a forward pass; a timer passes one segment's queries over a longer prefix.
        """
        n_heads, seq_len = queries.shape[-3], keys.shape[-2]
        kv_index = torch.arange(n_heads, device=queries.device) // (n_heads // keys.shape[-3])  # (H,)
        offset = seq_len - queries.shape[-2]
        key_stream, value_stream = linalg.StreamingFactors(), linalg.StreamingFactors()
        side = None
        if not causal:
            key_stream.update(keys)
            value_stream.update(values)
            side = KeySide(key_stream, value_stream, kv_index)
        seen = 0
        for start, stop in segments if segments is not None else self.segments(seq_len):
            if causal:
                key_stream.update(keys[..., seen:stop, :])
                value_stream.update(values[..., seen:stop, :])
                seen = stop
                side = KeySide(key_stream, value_stream, kv_index)
            mask = causal_mask(start, stop, stop, queries.device) if causal else None
            yield SegmentView(start, stop, queries[..., start - offset:stop - offset, :], side, mask)
