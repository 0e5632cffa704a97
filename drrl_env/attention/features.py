"""What one decision's observation is computed from: the one function the analysis (``analysis.py``)
stores it with and the latency timer (``costs/latency.py``) times it with."""

from __future__ import annotations

import torch

from drrl_env.attention import linalg
from drrl_env.attention.linalg import Factors
from drrl_env.attention.workload import SegmentView


def observation_features(
    view: SegmentView,
    ranks: torch.Tensor,
    scaling: torch.Tensor | float,
    compress_values: bool,
    q_factors: Factors | None = None,
) -> dict[str, torch.Tensor]:
    """What one decision's observation is computed from, all of it deployable (the segment's q, k, v
    and the method's factors, never the exact output): the spectra ``sv_q``, ``sv_k`` (..., H, d),
    the pairwise output bounds ``pair_bound`` (..., H, R, R) (``linalg.output_bound_pairs``, plus the
    value change when values are compressed; infinite where the method has no score-change identity)
    and the deployable scale ``value_sq`` (..., H) = T mean_j ||v_j||^2.  The analysis stores them;
    the latency timer times this same function (``costs/latency.py``: the features' measured cost).

    ranks: (R,) the rank grid; scaling: the score scaling, broadcastable to (...); ``q_factors``:
    ``Factors.of(view.queries)`` when the caller has it.
    """
    method, side, heads = view.side.method, view.side, view.queries.shape[-3]
    d = view.queries.shape[-1]
    q_factors = q_factors if q_factors is not None else Factors.of(view.queries)
    keys = side.key_factors
    change_sq = method.score_change_sq(q_factors, keys, ranks)  # (..., H, R, R) or None
    if change_sq is None:  # no score-change identity: bounds unknown (infinite, shown clipped)
        pair_bound = torch.full(
            (*view.queries.shape[:-2], len(ranks), len(ranks)),
            torch.inf,
            dtype=torch.float64,
            device=view.queries.device,
        )
        pair_bound.diagonal(dim1=-2, dim2=-1).zero_()  # (..., H, R, R)
    else:
        value_norm = linalg.expand_heads(side.value_norm, heads, -1)  # (..., H)
        pair_bound = linalg.output_bound_pairs(change_sq, scaling, value_norm)  # (..., H, R, R)
        if compress_values:
            pair_bound = pair_bound + linalg.expand_heads(
                method.value_change(side.value_factors, ranks, view.stop - view.start), heads
            )
    return {
        "sv_q": _pad(q_factors.sv, d),
        "sv_k": _pad(linalg.expand_heads(keys.sv, heads, -2), d),
        "pair_bound": pair_bound,
        "value_sq": (view.stop - view.start) * linalg.expand_heads(side.value_mean_square, heads, -1),
    }


def _pad(sv: torch.Tensor, width: int) -> torch.Tensor:
    """Singular values (..., k) zero-padded to (..., width)."""
    return torch.nn.functional.pad(sv, (0, width - sv.shape[-1]))
