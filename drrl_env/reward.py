"""The reward: ``alpha * fidelity - beta * cost - gamma * perturbation`` for one step.

fidelity      cosine similarity between the segment's low-rank and exact attention outputs over
              all heads (``fidelity_metric="cosine"``), or 1 - relative Frobenius error clipped
              at 0 (``"one_minus_error"``).  1 at full rank.
cost          the cost model's ratio to exact attention (mean over heads with per-head ranks).
perturbation  bound on the relative output change from the layer's previous rank to the chosen
              one, sqrt(sum_h bound_h(prev_h, r_h)^2) / ||O||_F (``RelativeBounds.layer_change``),
              clipped to ``bound_clip``; 0 on a layer's first segment, which has no previous rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from drrl_env.analysis import DocumentAnalysis

TINY = 1e-30
F = TypeVar("F", float, np.ndarray)


@dataclass(frozen=True)
class OutputError:
    """How close the low-rank output of one (layer, segment) is to exact attention."""

    cosine: float
    relative_error: float


def output_error(analysis: DocumentAnalysis, layer: int, segment: int, rank_index: np.ndarray) -> OutputError:
    """Exact fidelity of the ranks ``rank_index`` (one per head, shape (H,)) from the per-head stats."""
    heads = np.arange(rank_index.shape[0])
    dot = analysis.dot[layer, segment, rank_index, heads].sum()
    low = analysis.low_sq[layer, segment, rank_index, heads].sum()
    err = analysis.err_sq[layer, segment, rank_index, heads].sum()
    out = analysis.out_sq[layer, segment].sum()
    if out <= TINY:  # exact output is zero: only a zero approximation is faithful
        return OutputError(1.0 if low <= TINY else 0.0, 0.0 if err <= TINY else 1.0)
    cosine = dot / np.sqrt(out * low) if low > TINY else 0.0
    return OutputError(float(np.clip(cosine, -1.0, 1.0)), float(np.sqrt(err / out)))


def fidelity_value(error: OutputError, metric: str) -> float:
    if metric == "cosine":
        return error.cosine
    return max(0.0, 1.0 - error.relative_error)


@dataclass(frozen=True)
class RewardWeights:
    """The reward's weights; the one definition used by the env and by ``drrl tradeoff``."""

    alpha: float
    beta: float
    gamma: float

    def terms(self, fidelity: F, cost: F, perturbation: F) -> dict[str, F]:
        """Signed contributions that sum to the reward (floats, or arrays of many steps)."""
        return {
            "fidelity": self.alpha * fidelity,
            "cost": -self.beta * cost,
            "perturbation": -self.gamma * perturbation,
        }

    def total(self, fidelity: F, cost: F, perturbation: F) -> F:
        """``alpha * fidelity - beta * cost - gamma * perturbation``."""
        return sum(self.terms(fidelity, cost, perturbation).values())
