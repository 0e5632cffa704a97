"""Measured cost models: latency ratios timed on the env's device (``latency.py``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from drrl_env.costs.base import AttentionShape, CostModel, register_cost_model
from drrl_env.costs.latency import MAX_PROFILE_LEN, LatencyMeasurer, LatencyProfile


class MeasuredCostModel(CostModel):
    """Timed on the env's device: nondeterministic, exclusive use of the device, key lengths up to
    ``MAX_PROFILE_LEN``.  Subclasses set their measurer's warm-ups and repeats."""

    deterministic = False
    measures_device = True
    max_key_len = MAX_PROFILE_LEN
    warmup, repeats = 5, 31

    def __init__(
        self, device: torch.device, dtype: str = "float32", cache_root: Path | None = None, refresh: bool = False
    ) -> None:
        super().__init__(device, dtype, cache_root, refresh)
        self.measurer = LatencyMeasurer(device, warmup=self.warmup, repeats=self.repeats)


@register_cost_model
class ProfileCostModel(MeasuredCostModel):
    """Latency ratios from a per-device profile cached on disk.  Platform-dependent."""

    name = "profile"

    def __init__(
        self, device: torch.device, dtype: str = "float32", cache_root: Path | None = None, refresh: bool = False
    ) -> None:
        super().__init__(device, dtype, cache_root, refresh)
        self.profiles: dict[AttentionShape, LatencyProfile] = {}

    def profile(self, shape: AttentionShape) -> LatencyProfile:
        """The profile of ``shape``'s kind of segment (queries of ``segment_len``; key length free)."""
        kind = replace(shape, query_len=shape.segment_len, key_len=shape.segment_len)
        if kind not in self.profiles:
            self.profiles[kind] = LatencyProfile(kind, self.dtype, self.measurer, self.cache_root, self.refresh)
        return self.profiles[kind]

    def cost_ratios(self, shape: AttentionShape) -> np.ndarray:
        return self.profile(shape).ratios(shape.key_len)

    def feature_ratio(self, shape: AttentionShape) -> float:
        return self.profile(shape).feature_ratio(shape.key_len)


@register_cost_model
class LiveCostModel(MeasuredCostModel):
    """Times every rank of every segment when asked (1 warm-up, 3 repeats): noisy and slow, never cached."""

    name = "live"
    warmup, repeats = 1, 3

    def cost_ratios(self, shape: AttentionShape) -> np.ndarray:
        return np.array([t.median for t in self.measurer.time_ranks(shape, self.dtype).ratios])

    def feature_ratio(self, shape: AttentionShape) -> float:
        """Timed with the decision's queries (its features and its exact attention, side by side)."""
        call = replace(shape, query_len=shape.segment_len, decision_len=shape.query_len)
        return float(self.measurer.time_ranks(call, self.dtype).features.median)
