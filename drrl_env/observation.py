"""The observation: a ``spaces.Dict`` describing the current (layer, segment) decision.

Bounds are relative to the exact output's norm, clipped to ``bound_clip`` and given as
``log1p(bound)`` so that values spanning orders of magnitude stay in a range networks handle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from drrl_env import linalg
from drrl_env.analysis import DocumentAnalysis

COST_CLIP = 10.0  # cost ratios above this (a rank 10x slower than exact attention) are shown as 10
CONTEXT_FIELDS = ("layer", "segment", "seq_len", "prev_rank", "epsilon", "progress")


def observation_space(n_heads: int, head_dim: int, n_ranks: int, bound_clip: float,
                      mask_shape: tuple[int, ...]) -> spaces.Dict:
    h, d, r = n_heads, head_dim, n_ranks
    log_clip = float(np.log1p(bound_clip))
    unit = {"low": 0.0, "high": 1.0, "dtype": np.float32}
    logged = {"low": 0.0, "high": log_clip, "dtype": np.float32}
    return spaces.Dict({
        "q_spectrum": spaces.Box(shape=(h, d), **unit),
        "k_spectrum": spaces.Box(shape=(h, d), **unit),
        "tail_energy": spaces.Box(shape=(h, r, 2), **unit),
        "band_energy": spaces.Box(shape=(h, r, 2), **unit),
        "output_bound": spaces.Box(shape=(h, r), **logged),
        "change_bound": spaces.Box(shape=(h, r), **logged),
        "layer_bound": spaces.Box(shape=(r, 2), **logged),
        "cost": spaces.Box(low=0.0, high=COST_CLIP, shape=(r,), dtype=np.float32),
        "context": spaces.Box(low=0.0, high=max(1.0, log_clip), shape=(len(CONTEXT_FIELDS),), dtype=np.float32),
        "action_mask": spaces.MultiBinary(mask_shape),
    })


@dataclass(frozen=True)
class Bounds:
    """Relative output-perturbation bounds of one document (see ``linalg.py``), clipped.

    head_exact: (Ly, S, H, R) ||O_h,r - O_h||_F / ||O_h||_F bound, per head.
    layer_exact: (Ly, S, R) the same over all heads with one rank for the layer.
    """

    head_exact: np.ndarray
    layer_exact: np.ndarray

    @classmethod
    def of(cls, analysis: DocumentAnalysis, clip: float) -> Bounds:
        to_exact = analysis.pair_bound[..., -1]  # (Ly, S, H, R)
        head = linalg.relative(to_exact, np.sqrt(analysis.out_sq)[..., None], clip)
        layer = linalg.relative(np.sqrt((to_exact ** 2).sum(2)), np.sqrt(analysis.out_sq.sum(2))[..., None], clip)
        return cls(head, layer)


def change_bounds(analysis: DocumentAnalysis, layer: int, segment: int, prev: np.ndarray,
                  clip: float) -> tuple[np.ndarray, np.ndarray]:
    """Relative bounds on the output change from the previous ranks ``prev`` (H,) to each candidate.

    Returns per head (H, R) and for the layer with every head at the candidate rank (R,).
    """
    heads = np.arange(prev.shape[0])
    pairs = analysis.pair_bound[layer, segment, heads, prev]  # (H, R)
    out_sq = analysis.out_sq[layer, segment]  # (H,)
    head = linalg.relative(pairs, np.sqrt(out_sq)[:, None], clip)
    layer_rel = linalg.relative(np.sqrt((pairs ** 2).sum(0)), np.sqrt(out_sq.sum()), clip)
    return head, layer_rel


def build_observation(analysis: DocumentAnalysis, bounds: Bounds, layer: int, segment: int,
                      prev: np.ndarray | None, cost: np.ndarray, context: np.ndarray,
                      mask: np.ndarray, clip: float) -> dict[str, np.ndarray]:
    kept_q = analysis.kept_q[layer, segment]  # (H, R)
    kept_k = analysis.kept_k[layer, segment]  # (H, R)
    tail = np.sqrt(np.clip(1.0 - np.stack([kept_q, kept_k], -1), 0.0, 1.0))  # (H, R, 2)
    if prev is None:
        band = np.zeros_like(tail)
        change_head = np.zeros_like(kept_q)
        change_layer = np.zeros(kept_q.shape[-1])
    else:
        heads = np.arange(prev.shape[0])
        prev_kept = np.stack([kept_q[heads, prev], kept_k[heads, prev]], -1)[:, None, :]  # (H, 1, 2)
        band = np.sqrt(np.abs(np.stack([kept_q, kept_k], -1) - prev_kept)).clip(0.0, 1.0)  # (H, R, 2)
        change_head, change_layer = change_bounds(analysis, layer, segment, prev, clip)
    return {
        "q_spectrum": analysis.q_spectrum[layer, segment].copy(),
        "k_spectrum": analysis.k_spectrum[layer, segment].copy(),
        "tail_energy": tail.astype(np.float32),
        "band_energy": band.astype(np.float32),
        "output_bound": np.log1p(bounds.head_exact[layer, segment]).astype(np.float32),
        "change_bound": np.log1p(change_head).astype(np.float32),
        "layer_bound": np.log1p(np.stack([bounds.layer_exact[layer, segment], change_layer], -1)).astype(np.float32),
        "cost": cost.clip(0.0, COST_CLIP).astype(np.float32),
        "context": context.astype(np.float32),
        "action_mask": mask.astype(np.int8),
    }
