"""DRRL-KV-v0's fast mode, stated as such: a document's plan scored by an additive surrogate of its excess
NLL instead of by running the model.

The surrogate weighs each decision's isolated output error (``output_errors.py``, ``D``) by a
sensitivity fitted per layer and per kind of change (keys, values, eviction) against closed-loop
episodes (:func:`fit_sensitivity`).  A plan P of executed levels (keys k, values v for every decided
block s and layer l) is predicted to cost, in step u,

    excess_u(P) ~ sum_{s, l} a[l, K] D[s, l, K, k, u] + a[l, V] D[s, l, V, v, u]    (k, v stored)
                           or a[l, E] D[s, l, K, evict, u]                             (evicted)

and over the document the sum over u (nats).  A policy's *requests* are executed as the environment
executes them, block by block through the budget's projection (``budget.py``): bytes are
deterministic, only the NLL is modeled.  What the surrogate ignores (how decisions interact across
blocks and layers) is measured by ``benchmarks/kv_headroom.py`` against the closed loop (fit, Kendall
tau); plans found here are verified in the closed loop before any figure is quoted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from drrl_env.kv.budget import project

CHANGES = ("keys", "values", "evict")  # the sensitivity's columns


def step_features(errors: np.ndarray, levels: np.ndarray, evict: int) -> np.ndarray:
    """(steps, Ly, 3) the output errors that executed ``levels`` (steps, 2, Ly) put in each step u, per layer
    and kind of change: sum over blocks s of D[s, l, K, k, u], D[s, l, V, v, u], or D[s, l, K, evict, u]."""
    levels = np.asarray(levels, dtype=np.int64)
    blocks, layers = np.meshgrid(np.arange(len(levels)), np.arange(errors.shape[1]), indexing="ij")  # (steps, Ly)
    evicted = (levels == evict).any(1)  # (steps, Ly)
    keys = np.where(evicted[..., None], 0.0, errors[blocks, layers, 0, levels[:, 0]])  # (steps, Ly, U)
    values = np.where(evicted[..., None], 0.0, errors[blocks, layers, 1, levels[:, 1]])
    gone = np.where(evicted[..., None], errors[blocks, layers, 0, evict], 0.0)
    return np.stack([keys.sum(0), values.sum(0), gone.sum(0)], axis=-1).transpose(1, 0, 2)  # (U, Ly, 3)


def fit_sensitivity(features: Sequence[np.ndarray], excess: Sequence[np.ndarray]) -> np.ndarray:
    """Non-negative least squares of each step's realized excess NLL on ``features`` (``step_features`` of
    the same episodes, (U, Ly, 3) each): the sensitivity a (Ly, 3)."""
    rows = np.concatenate([f.reshape(len(f), -1) for f in features])  # (sum U, Ly * 3)
    targets = np.concatenate([np.asarray(e, dtype=float) for e in excess])
    if len(rows) != len(targets):
        raise ValueError(f"{len(rows)} feature rows against {len(targets)} excess values; pass whole episodes")
    scale = np.maximum(rows.max(0), 1e-30)  # columns on one scale for the solver
    weights, _ = nnls(rows / scale, targets)
    return (weights / scale).reshape(features[0].shape[1:])


@dataclass(frozen=True)
class FastDocument:
    """One document in the fast mode: additive ``effects`` (steps, Ly, 2, R) of each decision (the evict
    column holds eviction's, in both kinds), the bytes one layer stores for each block at each level
    ``level_bytes`` (steps, 2, R), the bytes ``free`` for blocks under the budget, the ladder index of
    ``evict``."""

    effects: np.ndarray
    level_bytes: np.ndarray
    free: int
    evict: int

    def __post_init__(self) -> None:
        steps, _, kinds, levels = self.effects.shape
        if kinds != 2 or self.level_bytes.shape != (steps, 2, levels):
            raise ValueError(
                f"effects {self.effects.shape} (steps, Ly, 2, R) and level_bytes {self.level_bytes.shape} "
                "(steps, 2, R) do not describe the same document and ladder"
            )

    @classmethod
    def of(
        cls, errors: np.ndarray, sensitivity: np.ndarray, level_bytes: np.ndarray, free: int, evict: int
    ) -> FastDocument:
        """From output errors ``errors`` (steps, Ly, 2, R, steps) and a fitted ``sensitivity`` (Ly, 3)."""
        total = errors.sum(-1)  # (steps, Ly, 2, R) summed over the steps they reach
        effects = total * sensitivity[None, :, :2, None]
        effects[..., evict] = total[..., 0, evict][..., None] * sensitivity[None, :, 2, None]
        return cls(effects, level_bytes, free, evict)

    @property
    def steps(self) -> int:
        return self.effects.shape[0]

    @property
    def n_layers(self) -> int:
        return self.effects.shape[1]

    def execute(self, requests: np.ndarray) -> np.ndarray:
        """Executed levels (steps, 2, Ly) of ``requests`` (steps, 2, Ly), or of one static request (2, Ly) for
        every block, projected block by block onto the bytes left, as the environment does."""
        requests = np.asarray(requests, dtype=np.int64)
        if requests.ndim == 2:
            requests = np.broadcast_to(requests, (self.steps, *requests.shape))
        executed, spent = np.empty_like(requests), 0
        for s, (keys, values) in enumerate(requests):
            executed[s] = project(keys, values, self.level_bytes[s], self.free - spent, self.evict)
            spent += self.bytes_of(executed[s : s + 1], first=s)
        return executed

    def bytes_of(self, levels: np.ndarray, first: int = 0) -> int:
        """Bytes stored by executed ``levels`` (n, 2, Ly) of blocks first..first+n-1."""
        steps = first + np.arange(len(levels))[:, None]
        sizes = self.level_bytes[steps, 0, levels[:, 0]] + self.level_bytes[steps, 1, levels[:, 1]]  # (n, Ly)
        return int(np.where((levels == self.evict).any(1), 0, sizes).sum())

    def excess(self, levels: np.ndarray) -> float:
        """Predicted excess NLL (nats) of executed ``levels`` (steps, 2, Ly)."""
        levels = np.asarray(levels, dtype=np.int64)
        s, layer = np.meshgrid(np.arange(self.steps), np.arange(self.n_layers), indexing="ij")  # (steps, Ly)
        cost = self.effects[s, layer, 0, levels[:, 0]] + self.effects[s, layer, 1, levels[:, 1]]
        evicted = (levels == self.evict).any(1)
        return float(np.where(evicted, self.effects[s, layer, 0, self.evict], cost).sum())

    def predict(self, requests: np.ndarray) -> float:
        """Predicted excess NLL of ``requests`` once executed (``execute``)."""
        return self.excess(self.execute(requests))
