"""Cost models: the cost of a segment's attention at each candidate rank, relative to exact attention.

Every model answers ``cost_ratios(shape) -> (R,)`` for an :class:`AttentionShape` and declares what
it is, so that callers ask instead of comparing names:

    deterministic    the same shape always gets the same answer (else the env is nondeterministic);
    measures_device  the answer is timed on the env's device (runs must not share the device);
    max_key_len      the longest key length it can answer for (None: any).

The environment puts the vector in the observation and the chosen rank's entry in the reward.
Adding a cost model: subclass :class:`CostModel` in a new file of this package, decorate it with
:func:`register_cost_model`, and import that file in ``costs/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from drrl_env.costs.counting import feature_flop_ratio
from drrl_env.registry import Registry

if TYPE_CHECKING:
    from drrl_env.attention.methods.base import LowRankMethod


@dataclass(frozen=True)
class AttentionShape:
    """One segment's attention problem (all heads) at every candidate rank.

    ``query_len`` queries over ``key_len`` keys; ``segment_len`` is the queries of this kind of
    call (the configured segment length in prefill, where a document's last segment may be
    shorter; 1 in decode), which keys a latency profile.  ``method``: the low-rank method object
    the costs count and time; two shapes are equal when their methods have the same name and
    options (``method_key``), whatever else the objects hold (a calibrated method's bases).
    ``decision_len``: the queries one decision covers, whose observation is computed once (the
    configured segment length: a prefill segment, a decode window); None = ``segment_len``.
    """

    method: LowRankMethod = field(compare=False)
    ranks: tuple[int, ...]
    query_len: int
    key_len: int
    head_dim: int
    n_heads: int
    n_kv_heads: int
    causal: bool
    compress_values: bool
    segment_len: int
    decision_len: int | None = None
    method_key: tuple[str, tuple[tuple[str, Any], ...]] = field(init=False)

    def __post_init__(self) -> None:
        # (name, sorted options): what identifies the method in equality, hashing and cache keys
        object.__setattr__(self, "method_key", (self.method.name, tuple(sorted(self.method.options().items()))))

    @property
    def decision_queries(self) -> int:
        """Queries per decision (``decision_len``, None resolved)."""
        return self.decision_len or self.segment_len


class CostModel(ABC):
    """Cost ratios to exact attention for an :class:`AttentionShape` (module docstring)."""

    name: ClassVar[str]
    deterministic: ClassVar[bool]
    measures_device: ClassVar[bool]
    max_key_len: ClassVar[int | None] = None

    def __init__(
        self, device: torch.device, dtype: str = "float32", cache_root: Path | None = None, refresh: bool = False
    ) -> None:
        self.device, self.dtype, self.cache_root, self.refresh = device, dtype, cache_root, refresh

    @abstractmethod
    def cost_ratios(self, shape: AttentionShape) -> np.ndarray:
        """(R,) float: cost at each rank / cost of exact attention (1.0 at full rank)."""

    def feature_ratio(self, shape: AttentionShape) -> float:
        """Cost of the observation's features for one decision (paid at every step, whatever the
        rank) / cost of the decision's exact attention; ``shape`` is the decision's problem (its
        ``query_len`` queries over ``key_len`` keys; in decode, a window of tokens).  Default: their
        FLOP share (``counting.feature_flop_ratio``); the measured models time them."""
        return feature_flop_ratio(shape)


_COST_MODELS: Registry[type[CostModel]] = Registry(
    CostModel, "cost_model", "or register a CostModel subclass with drrl_env.costs.register_cost_model"
)
register_cost_model = _COST_MODELS.register
cost_model_names = _COST_MODELS.names
cost_model_class = _COST_MODELS.get  # the class: its capabilities are class attributes


def make_cost_model(
    name: str, device: torch.device, dtype: str = "float32", cache_root: Path | None = None, refresh: bool = False
) -> CostModel:
    return cost_model_class(name)(device, dtype, cache_root, refresh)
