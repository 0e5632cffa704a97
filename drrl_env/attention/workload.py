"""The segment loop: what each decision's attention sees, for the reward, the model forward and the timer.

A workload cuts a sequence into segments and yields, per segment, a :class:`SegmentView`: the
segment's queries, the keys and values it may attend to (per K/V head: grouped-query attention
is read in place by the kernel), the mask, and the key and value factorizations, computed on first
use.  ``SegmentView.attention(rank, ...)`` is the one place where a segment's attention is computed
at a rank: ``analysis.py`` (the reward's fidelity and bounds), ``sources/hf_attention.py`` (the
low-rank model forward: end-of-episode fidelity and measured attention latency) and
``costs/latency.py`` (the latency profile, through ``Prefill.timed_segment``, which also replays
the factors' upkeep) all go through it, so what is rewarded is what is run and what is timed.
The method factors the visible keys and values (``LowRankMethod.factorize``): exact SVDs from the
streams' Gram matrices, or projections on calibrated bases, stored as a projected key cache.

:class:`Prefill`: the whole document is processed at once, segment by segment.  Bidirectional:
every segment sees all keys, factored once.  Causal: segment [a, b) sees keys [0, b); the K and V
factorizations follow the prefix by streaming Gram updates (``linalg.StreamingFactors``).
:class:`Decode`: an exact prompt, then teacher-forced decoding, one decision per window of tokens
(``workload="decode"``).  Tensors may carry leading dims (e.g. layers) before the head dim:
queries (..., H, L, d), keys and values (..., H_kv, L, d).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from drrl_env.attention import linalg
from drrl_env.attention.kernels import causal_mask, full_attention
from drrl_env.attention.linalg import Factors
from drrl_env.attention.methods.base import LowRankMethod
from drrl_env.registry import Registry


def segment_bounds(seq_len: int, segment_len: int) -> list[tuple[int, int]]:
    """Cut 0..seq_len into segments of ``segment_len``; a last piece shorter than half a
    segment joins the one before it."""
    starts = list(range(0, seq_len, segment_len))
    if len(starts) > 1 and seq_len - starts[-1] < segment_len / 2:
        starts.pop()
    return [(a, b) for a, b in zip(starts, starts[1:] + [seq_len])]


class KeySide:
    """The keys and values visible to a segment (snapshots of the streams), per K/V head, and
    their factors by ``method`` for ``layer``, computed on first use."""

    def __init__(
        self, keys: linalg.StreamingFactors, values: linalg.StreamingFactors, method: LowRankMethod, layer: int | None
    ) -> None:
        self._key_stream, self._value_stream = keys.snapshot(), values.snapshot()
        self.method, self.layer = method, layer

    @property
    def keys(self) -> torch.Tensor:
        """(..., H_kv, N, d)"""
        return self._key_stream.rows

    @property
    def values(self) -> torch.Tensor:
        """(..., H_kv, N, d)"""
        return self._value_stream.rows

    @cached_property
    def key_factors(self) -> Factors:
        """Per K/V head: left (..., H_kv, N, d), right (..., H_kv, d, d), sv (..., H_kv, d)."""
        return self.method.factorize(self._key_stream, "keys", self.layer)

    @cached_property
    def value_factors(self) -> Factors:
        return self.method.factorize(self._value_stream, "values", self.layer)

    @cached_property
    def value_norm(self) -> torch.Tensor:
        """(..., H_kv) ||V - 1 mu^T||_2, the centered spectral norm of each K/V head's values (from
        the stream's Gram matrix and row sum: O(d^3), whatever the number of values)."""
        return self._value_stream.centered_norm()

    @cached_property
    def value_mean_square(self) -> torch.Tensor:
        """(..., H_kv) mean_j ||v_j||^2 over the visible values, float64 (from the Gram matrix's trace)."""
        return self._value_stream.mean_square_norm()

    @property
    def key_len(self) -> int:
        return self._key_stream.rows.shape[-2]

    def upkeep(self, compress_values: bool, rank: int) -> None:
        """Computes what the method keeps of the keys (and values) for this segment at ``rank``:
        the factorization, and its rank-r factors (for a fixed basis: the width-r cache's new rows)."""
        self.key_factors.truncate(rank)
        if compress_values:
            self.value_factors.truncate(rank)


@dataclass(frozen=True)
class SegmentView:
    """One segment's attention problem: queries (..., H, T, d) at positions [start, stop), the
    visible keys and values (``side``), the mask (T, N) or None, and the method that computes it."""

    start: int
    stop: int
    queries: torch.Tensor
    side: KeySide
    mask: torch.Tensor | None

    def attention(
        self, rank: int, scaling: torch.Tensor | float, compress_values: bool, q_factors: Factors | None = None
    ) -> torch.Tensor:
        """The segment's attention output (..., H, T, d) at ``rank`` (head_dim = exact attention).

        ``q_factors``: ``Factors.of(queries)`` when the caller has it (reused by methods that factor
        the queries).
        """
        side = self.side
        if rank >= self.queries.shape[-1]:
            return full_attention(self.queries, side.keys, side.values, scaling, self.mask)
        return side.method.attention(
            self.queries,
            side.key_factors,
            side.values,
            scaling,
            self.mask,
            rank,
            v_factors=side.value_factors if compress_values else None,
            q_factors=q_factors,
        )


@dataclass(frozen=True)
class TimedSegment:
    """What the latency timer runs for one segment: ``view`` with its factors built at every rank,
    and ``upkeep(rank)``, which replays building them from the state before the segment (the
    stream update, and the method's factorization or its projection of the segment's keys and
    values at width r).  A rank's cost is attention + ``upkeep_share`` x upkeep: 1 when causal
    (each segment updates the factors), T/N when bidirectional (one factorization serves all N/T
    segments)."""

    view: SegmentView
    upkeep: Callable[[int], KeySide]
    upkeep_share: float


class Prefill:
    """The whole sequence at once, segment by segment (module docstring); the base of every workload.

    A workload is a subclass registered with :func:`register_workload` under its ``name`` (the
    ``workload`` option).  Its contract: ``from_options`` builds it from the config's segment length
    and prompt fraction; ``segments`` gives the decisions; ``forward_plan`` and ``scored_from`` say
    what a model forward runs and scores for them; ``cost_problem`` gives the attention call whose
    cost a decision reports.  ``views`` and ``timed_segment`` (the shared segment loop) are
    inherited, so the reward, the forward and the timer stay one code path.
    """

    name = "prefill"

    def __init__(self, segment_len: int) -> None:
        self.segment_len = segment_len

    @classmethod
    def from_options(cls, segment_len: int, prompt_fraction: float) -> Prefill:
        """The workload from the config's ``segment_len`` and ``decode_prompt``."""
        return cls(segment_len)

    def segments(self, seq_len: int) -> list[tuple[int, int]]:
        """The decisions' segments of a sequence of ``seq_len`` tokens."""
        return segment_bounds(seq_len, self.segment_len)

    def forward_plan(
        self, segments: list[tuple[int, int]], ranks: np.ndarray, head_dim: int
    ) -> tuple[list[tuple[int, int]], np.ndarray]:
        """What a model forward runs for decisions ``ranks`` (Ly, S) over ``segments``: the same."""
        return segments, ranks

    def scored_from(self, segments: list[tuple[int, int]]) -> int:
        """The first position whose next-token loss the perplexity counts: all of them."""
        return 0

    def cost_problem(self, start: int, stop: int, key_len: int) -> tuple[int, int]:
        """(queries, keys) of the attention call whose cost segment [start, stop) reports, given the
        ``key_len`` keys it sees: the whole segment over all of them."""
        return stop - start, key_len

    def views(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        causal: bool,
        method: LowRankMethod,
        *,
        layer: int | None = None,
        segments: list[tuple[int, int]] | None = None,
    ) -> Iterator[SegmentView]:
        """A view per segment (default: :meth:`segments` of the key length), computed by ``method``
        with the state of ``layer`` (None: every layer, stacked on the leading dim).

        queries (..., H, L, d), keys and values (..., H_kv, L, d), H a multiple of H_kv.
        """
        key_stream, value_stream = linalg.StreamingFactors(), linalg.StreamingFactors()
        side = None
        if not causal:
            key_stream.update(keys)
            value_stream.update(values)
            side = KeySide(key_stream, value_stream, method, layer)
        seen = 0
        for start, stop in segments if segments is not None else self.segments(keys.shape[-2]):
            if causal:
                key_stream.update(keys[..., seen:stop, :])
                value_stream.update(values[..., seen:stop, :])
                seen = stop
                side = KeySide(key_stream, value_stream, method, layer)
            mask = causal_mask(start, stop, stop, queries.device) if causal else None
            yield SegmentView(start, stop, queries[..., start:stop, :], side, mask)

    def timed_segment(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        causal: bool,
        method: LowRankMethod,
        compress_values: bool,
        ranks: tuple[int, ...],
    ) -> TimedSegment:
        """The last segment of a sequence, as the timer runs it: queries (..., H, T, d) are the last
        T positions of keys and values (..., H_kv, N, d); the state before the segment (the prefix
        [0, N - T) already in the streams, projected at every rank where the method projects) is
        built untimed."""
        t, n = queries.shape[-2], keys.shape[-2]
        low = [r for r in ranks if r < queries.shape[-1]]
        before_keys, before_values = linalg.StreamingFactors(), linalg.StreamingFactors()
        if causal and n > t:
            before_keys.update(keys[..., : n - t, :])
            before_values.update(values[..., : n - t, :])
            prefix = KeySide(before_keys, before_values, method, 0)
            for rank in low:
                prefix.upkeep(compress_values, rank)  # the cache the segment extends
            for stream in (before_keys, before_values):
                stream.fold()  # the prefix's moments, which the earlier decisions' features folded
        new = slice(n - t if causal else 0, n)

        def fresh() -> KeySide:  # the segment's keys and values arrive
            key_stream, value_stream = before_keys.fork(), before_values.fork()
            key_stream.update(keys[..., new, :])
            value_stream.update(values[..., new, :])
            return KeySide(key_stream, value_stream, method, 0)

        def upkeep(rank: int) -> KeySide:
            side = fresh()
            side.upkeep(compress_values, rank)
            return side

        side = fresh()
        for rank in low:
            side.upkeep(compress_values, rank)
        mask = causal_mask(n - t, n, n, queries.device) if causal and t > 1 else None  # one last query sees all
        return TimedSegment(SegmentView(n - t, n, queries, side, mask), upkeep, 1.0 if causal else t / n)


class Decode(Prefill):
    """Teacher-forced decoding after an exact prompt (causal models only).

    The first ``prompt_fraction`` of the document (rounded down to whole segments, at least one)
    is the prompt, prefilled with exact attention; the rest is decoded one token at a time over a
    KV cache kept in the method's basis (calibrated: the projected keys and values), in windows of
    ``segment_len`` positions, one decision per (layer, window).  Token t attends to keys [0, t],
    so a window's outputs are exactly the causal attention of its queries that the segment loop
    computes (the fidelity, bounds and model forward are Prefill's, over the windows); what differs
    is the cost: one query over the whole cache per token (``query_len`` 1), the cache's upkeep
    being the projection of the token's key and value.  Perplexity counts the decoded tokens only.
    """

    name = "decode"

    @classmethod
    def from_options(cls, segment_len: int, prompt_fraction: float) -> Decode:
        return cls(segment_len, prompt_fraction)

    def __init__(self, segment_len: int, prompt_fraction: float) -> None:
        super().__init__(segment_len)
        self.prompt_fraction = prompt_fraction

    def segments(self, seq_len: int) -> list[tuple[int, int]]:
        prompt = max(self.segment_len, int(seq_len * self.prompt_fraction) // self.segment_len * self.segment_len)
        if seq_len - prompt < 1:
            raise ValueError(
                f"a {seq_len}-token document leaves nothing to decode after a {prompt}-token prompt; "
                f"lower decode_prompt ({self.prompt_fraction}) or segment_len, or raise min_doc_tokens"
            )
        return [(prompt + a, prompt + b) for a, b in segment_bounds(seq_len - prompt, self.segment_len)]

    def forward_plan(
        self, segments: list[tuple[int, int]], ranks: np.ndarray, head_dim: int
    ) -> tuple[list[tuple[int, int]], np.ndarray]:
        """The prompt as one more segment at full rank, then the windows at their ranks."""
        prompt = np.full((ranks.shape[0], 1), head_dim, dtype=ranks.dtype)
        return [(0, segments[0][0]), *segments], np.concatenate([prompt, ranks], axis=1)

    def scored_from(self, segments: list[tuple[int, int]]) -> int:
        return segments[0][0]

    def cost_problem(self, start: int, stop: int, key_len: int) -> tuple[int, int]:
        """One token over the cache, at the window's mean cache length (token t sees t + 1 keys)."""
        return 1, (start + stop + 1) // 2


_WORKLOADS: Registry[type[Prefill]] = Registry(
    Prefill, "workload", "or register a Prefill subclass with drrl_env.attention.workload.register_workload"
)
register_workload = _WORKLOADS.register
workload_names = _WORKLOADS.names
workload_class = _WORKLOADS.get
register_workload(Prefill)
register_workload(Decode)


def make_workload(name: str, segment_len: int, prompt_fraction: float) -> Prefill:
    """The registered workload ``name`` with the config's segment length and prompt fraction; an unknown
    name is a ``ValueError`` that lists the known ones."""
    return _WORKLOADS.get(name).from_options(segment_len, prompt_fraction)
