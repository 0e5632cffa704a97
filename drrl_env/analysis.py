"""Everything the environment needs about one document, computed once per document.

For every (layer, segment) this runs the exact attention and the low-rank kernel at every
candidate rank, and keeps per-head statistics from which the fidelity of *any* rank choice
(one rank per layer or one per head) follows exactly:

    cos(O, O_hat) = sum_h <O_h, O_hat_h> / (||O||_F ||O_hat||_F),
    rel_err       = sqrt(sum_h ||O_hat_h - O_h||_F^2) / ||O||_F.

It also keeps the spectra and the pairwise output-perturbation bounds (``linalg.py``), so an
episode on a cached document runs no matrix work at all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from drrl_env.attention import linalg
from drrl_env.attention.features import observation_features
from drrl_env.attention.linalg import Factors
from drrl_env.attention.methods.base import LowRankMethod
from drrl_env.attention.workload import Prefill
from drrl_env.sources.base import AttentionTrace


@dataclass(frozen=True)
class DocumentAnalysis:
    """Per-document arrays, indexed [layer, segment, ...] (H = query heads, R = candidate ranks).

    segments: list of (start, stop) token positions.
    key_lens: (S,) keys visible to each segment (all L, or the prefix up to the segment's end).
    q_spectrum, k_spectrum: (Ly, S, H, d) singular values / largest one, in [0, 1].
    kept_q, kept_k: (Ly, S, H, R) energy fraction kept at each rank, E(r) / E(d), in [0, 1].
    pair_bound: (Ly, S, H, R, R) bound on ||O_a - O_b||_F per head, for ranks a, b.
    value_sq: (Ly, S, H) T * mean_j ||v_j||^2 over the visible values: the squared output norm if each
        of the T queries spread its attention evenly (||o_i||^2 <= sum_j a_ij ||v_j||^2); from V
        alone, so a deployed model has it (the deployable scale of the bounds).

    Privileged (they need exact attention; the reward reads them, a deployable observation never does):
    out_sq: (Ly, S, H) ||O_h||_F^2 of exact attention.
    dot, low_sq, err_sq: (Ly, S, R, H) <O_h, O_hat_h>, ||O_hat_h||^2, ||O_hat_h - O_h||^2 at each rank.
    """

    segments: list[tuple[int, int]]
    key_lens: np.ndarray
    q_spectrum: np.ndarray
    k_spectrum: np.ndarray
    kept_q: np.ndarray
    kept_k: np.ndarray
    pair_bound: np.ndarray
    value_sq: np.ndarray
    out_sq: np.ndarray
    dot: np.ndarray
    low_sq: np.ndarray
    err_sq: np.ndarray

    @property
    def n_segments(self) -> int:
        return len(self.segments)

    @property
    def seq_len(self) -> int:
        return self.segments[-1][1]

    def layer(self, index: int) -> DocumentAnalysis:
        """Layer ``index`` alone (Ly = 1; views of these arrays)."""
        one = slice(index, index + 1)
        return dataclasses.replace(
            self,
            **{
                f.name: getattr(self, f.name)[one]
                for f in dataclasses.fields(self)
                if f.name not in ("segments", "key_lens")
            },
        )


@dataclass(frozen=True)
class RelativeBounds:
    """A document's bounds relative to a scale of the output, clipped to ``clip``, and its
    energies, tabulated once so that a step only indexes (``linalg.py`` for the equations).

    The scale is deployable by default: ||O_h|| is replaced by sqrt(value_sq_h), the output norm of
    evenly spread attention, from the visible values alone.  ``privileged=True`` divides by the
    exact output's norm ||O_h||_F instead (the first version's bounds: analysis and oracles only,
    since a deployed model would need exact attention to know it).

    kept: (Ly, S, H, R, 2) energy fraction of Q and K kept at each rank.
    tail: (Ly, S, H, R, 2) ||X - X_r||_F / ||X||_F = sqrt(1 - kept), float32.
    head_pairs: (Ly, S, H, R, R) bound on ||O_h,a - O_h,b||_F / scale_h.
    layer_pairs: (Ly, S, R, R) bound on ||O_a - O_b||_F / sqrt(sum_h scale_h^2) with every head at one rank.
    pair_bound, scale_sq: (Ly, S, H, R, R) the analysis' unscaled bounds and (Ly, S, H) the squared scales.
    """

    pair_bound: np.ndarray
    clip: float
    scale_sq: np.ndarray
    kept: np.ndarray
    tail: np.ndarray
    head_pairs: np.ndarray
    layer_pairs: np.ndarray

    @classmethod
    def of(cls, analysis: DocumentAnalysis, clip: float, privileged: bool = False) -> RelativeBounds:
        kept = np.stack([analysis.kept_q, analysis.kept_k], -1).astype(np.float64)
        scale_sq = analysis.out_sq if privileged else analysis.value_sq  # (Ly, S, H)
        pairs = analysis.pair_bound
        head = linalg.relative(pairs, np.sqrt(scale_sq)[..., None, None], clip)
        layer = linalg.relative(np.sqrt((pairs**2).sum(2)), np.sqrt(scale_sq.sum(2))[..., None, None], clip)
        return cls(pairs, clip, scale_sq, kept, np.sqrt(np.clip(1.0 - kept, 0.0, 1.0)).astype(np.float32), head, layer)

    def layer(self, index: int) -> RelativeBounds:
        """Layer ``index`` alone (Ly = 1)."""
        one = slice(index, index + 1)
        return RelativeBounds(
            self.pair_bound[one],
            self.clip,
            self.scale_sq[one],
            self.kept[one],
            self.tail[one],
            self.head_pairs[one],
            self.layer_pairs[one],
        )

    def layer_change(self, layer: int, segment: int, start: np.ndarray, stop: np.ndarray) -> float:
        """Bound on ||O_stop - O_start||_F / scale, head h switching rank index start[h] -> stop[h]."""
        if (start == start[0]).all() and (stop == stop[0]).all():
            return float(self.layer_pairs[layer, segment, start[0], stop[0]])
        heads = np.arange(start.shape[0])
        pairs = self.pair_bound[layer, segment, heads, start, stop]  # (H,)
        return float(
            linalg.relative(np.sqrt((pairs**2).sum()), np.sqrt(self.scale_sq[layer, segment].sum()), self.clip)
        )

    def layer_change_to_each_rank(self, layer: int, segment: int, start: np.ndarray) -> np.ndarray:
        """(R,) :meth:`layer_change` from ``start`` (H,) to every rank, all heads alike."""
        if (start == start[0]).all():
            return self.layer_pairs[layer, segment, start[0]]
        heads = np.arange(start.shape[0])
        pairs = self.pair_bound[layer, segment, heads, start]  # (H, R)
        return linalg.relative(np.sqrt((pairs**2).sum(0)), np.sqrt(self.scale_sq[layer, segment].sum()), self.clip)


@torch.no_grad()
def analyse(
    trace: AttentionTrace,
    workload: Prefill,
    ranks: tuple[int, ...],
    method: LowRankMethod,
    compress_values: bool,
    *,
    layer: int | None = None,
    outputs: list[torch.Tensor] | None = None,
) -> DocumentAnalysis:
    """Run exact and low-rank attention of every (layer, segment, rank) of ``trace``, segment by
    segment as ``workload`` presents them (all layers at once).

    layer: the trace holds this one layer of the model (Ly = 1; the method uses that layer's state),
        as in a closed-loop episode, where each layer's inputs come from the ranks already chosen.
    outputs: a list that receives, per segment, the low-rank outputs at every rank (R, Ly, H, T, d)
        (the closed loop continues the forward pass from them instead of computing them again).
    """
    d = trace.queries.shape[-1]
    scaling = trace.scaling.to(trace.queries.device)[:, None, None, None]  # (Ly, 1, 1, 1)
    rank_index = torch.tensor(ranks)
    per_segment = []
    for view in workload.views(trace.queries, trace.keys, trace.values, trace.causal, method, layer=layer):
        exact = view.attention(d, scaling, compress_values)  # (Ly, H, T, d)
        q_factors = Factors.of(view.queries)  # the spectra; reused by methods that factor the queries
        stats, approxes = [], []
        for rank in ranks:
            approx = exact if rank == d else view.attention(rank, scaling, compress_values, q_factors)
            stats.append(
                torch.stack(
                    [
                        (approx * exact).sum((-1, -2)),
                        approx.square().sum((-1, -2)),
                        (approx - exact).square().sum((-1, -2)),
                    ]
                )
            )  # (3, Ly, H)
            approxes.append(approx)
        if outputs is not None:
            outputs.append(torch.stack(approxes))  # (R, Ly, H, T, d)
        per_segment.append(
            {
                "segment": (view.start, view.stop),
                "key_len": view.side.key_len,
                **observation_features(view, rank_index, scaling[..., 0, 0], compress_values, q_factors),
                "out_sq": exact.square().sum((-1, -2)),
                "stats": torch.stack(stats, dim=1),  # (3, R, Ly, H)
            }
        )

    def stacked(key: str) -> torch.Tensor:
        return torch.stack([p[key] for p in per_segment], dim=1)  # (Ly, S, ...)

    sv_q, sv_k = stacked("sv_q"), stacked("sv_k")
    stats = torch.stack([p["stats"] for p in per_segment], dim=3).double().cpu().numpy()  # (3, R, Ly, S, H)
    stats = stats.transpose(0, 2, 3, 1, 4)  # (3, Ly, S, R, H)
    return DocumentAnalysis(
        segments=[p["segment"] for p in per_segment],
        key_lens=np.array([p["key_len"] for p in per_segment]),
        q_spectrum=_normalized(sv_q),
        k_spectrum=_normalized(sv_k),
        kept_q=_kept(sv_q, rank_index),
        kept_k=_kept(sv_k, rank_index),
        pair_bound=stacked("pair_bound").cpu().numpy(),
        value_sq=stacked("value_sq").cpu().numpy(),
        out_sq=stacked("out_sq").double().cpu().numpy(),
        dot=stats[0],
        low_sq=stats[1],
        err_sq=stats[2],
    )


def _normalized(sv: torch.Tensor) -> np.ndarray:
    sv = sv.double().cpu().numpy()
    return linalg.relative(sv, sv[..., :1], clip=1.0).astype(np.float32)


def _kept(sv: torch.Tensor, ranks: torch.Tensor) -> np.ndarray:
    energy = linalg.cumulative_energy(sv, ranks).cpu().numpy()  # (..., R)
    return linalg.relative(energy, energy[..., -1:], clip=1.0).astype(np.float32)
