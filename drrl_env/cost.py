"""Cost models: the cost of computing a segment's attention at each candidate rank, relative to
exact (full-rank) attention of the same segment.

Every model answers ``cost_ratios(shape) -> (R,)`` for an :class:`AttentionShape` and says whether
its answers are ``deterministic``.  The environment puts the vector in the observation and the
chosen rank's entry in the reward.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drrl_env.latency import KernelShape, LatencyMeasurer, LatencyProfile
from drrl_env.lowrank import attention_flops


@dataclass(frozen=True)
class AttentionShape:
    """One segment's attention problem (all heads); ``segment_len`` is the configured length
    (``query_len`` differs for a document's last segment)."""

    method: str
    ranks: tuple[int, ...]
    query_len: int
    key_len: int
    head_dim: int
    n_heads: int
    n_kv_heads: int
    causal: bool
    compress_values: bool
    segment_len: int


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


class ProfileCostModel(CostModel):
    """Latency ratios from a per-device profile cached on disk (``latency.py``).  Platform-dependent."""

    deterministic = False

    def __init__(self, device: torch.device, dtype: str, cache_root: Path | None, refresh: bool = False) -> None:
        self.measurer = LatencyMeasurer(device)
        self.dtype, self.cache_root, self.refresh = dtype, cache_root, refresh
        self.profiles: dict[KernelShape, LatencyProfile] = {}

    def profile(self, shape: AttentionShape, segment_len: int) -> LatencyProfile:
        kernel = KernelShape(shape.method, shape.compress_values, shape.causal, shape.n_heads, shape.n_kv_heads,
                             shape.head_dim, segment_len, self.dtype)
        if kernel not in self.profiles:
            self.profiles[kernel] = LatencyProfile(kernel, shape.ranks, self.measurer, self.cache_root, self.refresh)
        return self.profiles[kernel]

    def cost_ratios(self, shape: AttentionShape) -> np.ndarray:
        return self.profile(shape, shape.segment_len).ratios(shape.key_len)


class LiveCostModel(CostModel):
    """Times every rank of every segment when asked (1 warm-up, 3 repeats): noisy and slow, never cached."""

    deterministic = False

    def __init__(self, device: torch.device, dtype: str) -> None:
        self.measurer = LatencyMeasurer(device, warmup=1, repeats=3)
        self.dtype = dtype

    def cost_ratios(self, shape: AttentionShape) -> np.ndarray:
        kernel = KernelShape(shape.method, shape.compress_values, shape.causal, shape.n_heads, shape.n_kv_heads,
                             shape.head_dim, shape.query_len, self.dtype)
        return np.array([t.median for t in self.measurer.time_ranks(kernel, shape.ranks, shape.key_len).ratios])


def make_cost_model(name: str, device: torch.device, dtype: str = "float32", cache_root: Path | None = None,
                    refresh: bool = False) -> CostModel:
    if name == "flops":
        return FlopCostModel()
    if name == "profile":
        return ProfileCostModel(device, dtype, cache_root, refresh)
    if name == "live":
        return LiveCostModel(device, dtype)
    raise ValueError(f"cost_model={name!r} is not allowed; choose 'flops', 'profile' or 'live'")
