"""Cost models: the cost of computing a segment's attention at each candidate rank, relative to
exact (full-rank) attention of the same segment.

Every model answers ``cost_ratios(shape) -> (R,)`` for an :class:`AttentionShape` and says whether
its answers are ``deterministic``.  The environment puts the vector in the observation and the
chosen rank's entry in the reward.
"""

from __future__ import annotations

import statistics
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from drrl_env.linalg import Factors
from drrl_env.lowrank import attention_flops, causal_mask, full_attention, low_rank_attention


@dataclass(frozen=True)
class AttentionShape:
    """One segment's attention problem (all heads)."""

    method: str
    ranks: tuple[int, ...]
    query_len: int
    key_len: int
    head_dim: int
    n_heads: int
    n_kv_heads: int
    causal: bool
    compress_values: bool


class CostModel(ABC):
    deterministic: bool

    @abstractmethod
    def cost_ratios(self, shape: AttentionShape) -> np.ndarray:
        """(R,) float32: cost at each rank / cost of exact attention (1.0 at full rank)."""


class FlopCostModel(CostModel):
    """Analytic FLOP ratio (:func:`drrl_env.lowrank.attention_flops`).  Deterministic."""

    deterministic = True

    def cost_ratios(self, shape: AttentionShape) -> np.ndarray:
        return flop_ratios(shape)


def flop_ratios(shape: AttentionShape) -> np.ndarray:
    flops = [attention_flops(shape.method, r, query_len=shape.query_len, key_len=shape.key_len,
                             head_dim=shape.head_dim, n_heads=shape.n_heads, n_kv_heads=shape.n_kv_heads,
                             compress_values=shape.compress_values, causal=shape.causal)
             for r in shape.ranks]
    return np.asarray(flops, dtype=np.float64) / flops[-1]


class MeasuredCostModel(CostModel):
    """Median wall time of the environment's own kernels on random data of the same shape.

    For each rank the kernel (:func:`drrl_env.lowrank.low_rank_attention`, with the query-side
    factorization the method needs per segment; the key and value factors are maintained
    across segments and not timed) runs ``warmup`` times, then ``repeats`` timed runs; the ratio of
    medians to exact attention is returned.  CUDA is timed with events after synchronizing, CPU
    with ``time.perf_counter_ns``.  Results are memoised per shape for the life of the object.
    Platform-dependent: not deterministic.
    """

    deterministic = False

    def __init__(self, device: torch.device, warmup: int = 3, repeats: int = 7) -> None:
        self.device = device
        self.warmup = warmup
        self.repeats = repeats
        self._memo: dict[AttentionShape, np.ndarray] = {}

    def cost_ratios(self, shape: AttentionShape) -> np.ndarray:
        if shape not in self._memo:
            times = [self.time_rank(shape, r) for r in shape.ranks]
            self._memo[shape] = np.asarray(times) / times[-1]
        return self._memo[shape]

    @torch.no_grad()
    def time_rank(self, shape: AttentionShape, rank: int) -> float:
        """Median seconds for one segment's attention at ``rank`` (exact attention at head_dim)."""
        gen = torch.Generator(device=self.device).manual_seed(0)
        h, t, n, d = shape.n_heads, shape.query_len, shape.key_len, shape.head_dim
        q = torch.randn(h, t, d, generator=gen, device=self.device)  # (H, T, d)
        k, v = torch.randn(2, h, n, d, generator=gen, device=self.device)  # (H, N, d) each
        k_factors = Factors.of(k)
        v_factors = Factors.of(v) if shape.compress_values else None
        mask = causal_mask(n - t, n, n, self.device) if shape.causal else None
        scaling = d ** -0.5

        def run() -> torch.Tensor:
            if rank == d:
                return full_attention(q, k, v, scaling, mask)
            return low_rank_attention(q, k_factors, v, scaling, mask, rank, shape.method, v_factors=v_factors)

        return median_seconds(run, self.device, self.warmup, self.repeats)


def median_seconds(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs; CUDA events on a
    GPU (synchronized), ``perf_counter_ns`` on CPU."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        for _ in range(repeats):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(stop) / 1e3)
    else:
        for _ in range(repeats):
            begin = time.perf_counter_ns()
            fn()
            samples.append((time.perf_counter_ns() - begin) / 1e9)
    return statistics.median(samples)


def make_cost_model(name: str, device: torch.device) -> CostModel:
    if name == "flops":
        return FlopCostModel()
    if name == "measured":
        return MeasuredCostModel(device)
    raise ValueError(f"cost_model={name!r} is not allowed; choose 'flops' or 'measured'")
