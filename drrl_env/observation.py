"""The observation: a ``spaces.Dict`` describing the current (layer, segment) decision.

Bounds are relative to a scale of the output (deployable by default: ``analysis.RelativeBounds``),
clipped to ``bound_clip`` and given as ``log1p(bound)`` so that values spanning orders of
magnitude stay in a range networks handle.  :func:`build_observation` receives only what a
deployed model has when it decides: the segment's spectra, the bounds, the cost vector, the
context and the mask, never the exact attention output.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from drrl_env.analysis import RelativeBounds

COST_CLIP = 10.0  # cost ratios above this (a rank 10x slower than exact attention) are shown as 10
CONTEXT_FIELDS = ("layer", "segment", "seq_len", "prev_rank", "epsilon", "progress", "cost_used", "budget_left")


def observation_space(
    n_heads: int, head_dim: int, n_ranks: int, bound_clip: float, mask_shape: tuple[int, ...]
) -> spaces.Dict:
    h, d, r = n_heads, head_dim, n_ranks
    log_clip = float(np.log1p(bound_clip))
    unit = {"low": 0.0, "high": 1.0, "dtype": np.float32}
    logged = {"low": 0.0, "high": log_clip, "dtype": np.float32}
    return spaces.Dict(
        {
            "q_spectrum": spaces.Box(shape=(h, d), **unit),
            "k_spectrum": spaces.Box(shape=(h, d), **unit),
            "tail_energy": spaces.Box(shape=(h, r, 2), **unit),
            "band_energy": spaces.Box(shape=(h, r, 2), **unit),
            "output_bound": spaces.Box(shape=(h, r), **logged),
            "change_bound": spaces.Box(shape=(h, r), **logged),
            "layer_bound": spaces.Box(shape=(r, 2), **logged),
            "cost": spaces.Box(low=0.0, high=COST_CLIP, shape=(r,), dtype=np.float32),
            "context": spaces.Box(
                low=0.0, high=max(COST_CLIP, log_clip), shape=(len(CONTEXT_FIELDS),), dtype=np.float32
            ),
            "action_mask": spaces.MultiBinary(mask_shape),
        }
    )


def build_observation(
    q_spectrum: np.ndarray,
    k_spectrum: np.ndarray,
    bounds: RelativeBounds,
    segment: int,
    prev: np.ndarray | None,
    cost: np.ndarray,
    context: np.ndarray,
    mask: np.ndarray,
) -> dict[str, np.ndarray]:
    """The observation of one segment of the current layer: spectra (H, d), the layer's ``bounds``
    (Ly = 1), ``prev`` (H,) the layer's previous rank indices or None, cost (R,), context and mask."""
    layer = 0  # ``bounds`` holds the current layer only
    tail = bounds.tail[layer, segment]  # (H, R, 2)
    if prev is None:
        band = np.zeros_like(tail)
        change_head = np.zeros(tail.shape[:2])
        change_layer = np.zeros(tail.shape[1])
    else:
        kept = bounds.kept[layer, segment]  # (H, R, 2)
        heads = np.arange(prev.shape[0])
        band = np.sqrt(np.abs(kept - kept[heads, prev][:, None, :]))  # (H, R, 2)
        change_head = bounds.head_pairs[layer, segment, heads, prev]  # (H, R)
        change_layer = bounds.layer_change_to_each_rank(layer, segment, prev)  # (R,)
    return {
        "q_spectrum": q_spectrum.copy(),
        "k_spectrum": k_spectrum.copy(),
        "tail_energy": tail.copy(),
        "band_energy": band.astype(np.float32),
        "output_bound": np.log1p(bounds.head_pairs[layer, segment, :, :, -1]).astype(np.float32),
        "change_bound": np.log1p(change_head).astype(np.float32),
        "layer_bound": np.log1p(np.stack([bounds.layer_pairs[layer, segment, :, -1], change_layer], -1)).astype(
            np.float32
        ),
        "cost": cost.clip(0.0, COST_CLIP).astype(np.float32),
        "context": context.astype(np.float32),
        "action_mask": mask.astype(np.int8),
    }


def context_vector(
    layer: int,
    n_layers: int,
    segment: int,
    n_segments: int,
    seq_len: int,
    max_seq_len: int,
    prev_rank: float,
    epsilon: float,
    bound_clip: float,
    progress: float,
    cost_used: float,
    budget_left: float,
) -> np.ndarray:
    """(8,) ``CONTEXT_FIELDS``: layer and segment in [0, 1], seq_len / max_seq_len, the layer's
    previous rank / head_dim (0 = none), log1p(min(epsilon, bound_clip)), progress in [0, 1], the
    fraction of the episode's exact attention cost spent so far (clipped to ``COST_CLIP``), and the
    latency budget left as a fraction of the budget (1 without a budget)."""
    return np.array(
        [
            layer / max(n_layers - 1, 1),
            segment / max(n_segments - 1, 1),
            seq_len / max_seq_len,
            prev_rank,
            np.log1p(min(epsilon, bound_clip)),
            progress,
            min(cost_used, COST_CLIP),
            budget_left,
        ]
    )
