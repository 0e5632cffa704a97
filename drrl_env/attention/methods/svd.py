"""``svd``, the paper's method: truncated SVDs of the segment's Q and of K.

    S_r = s (U^Q_r S^Q_r V^Q_r^T V^K_r) (U^K_r S^K_r)^T          (T x r)(r x N)

B(r) = sum over the leading r x r block of the score energies (both sides truncated).
FLOPs per query head: Gram of Q 2Td^2, its eigendecomposition 9d^3, the factor Q V_r 2Tdr, the
core 2Tr^2 + 2r^2 d, and the score product 2TNr.
"""

from __future__ import annotations

import torch

from drrl_env.attention.linalg import Factors, expand_heads
from drrl_env.attention.methods.base import EIGH_FLOPS_PER_D3, LowRankMethod, register_method


@register_method
class SvdMethod(LowRankMethod):
    name = "svd"
    factors_queries = True

    def query_key(
        self, q: torch.Tensor, k_factors: Factors, rank: int, q_factors: Factors | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k_left, k_right = k_factors.truncate(rank)  # (..., H_kv, N, r), (..., H_kv, r, d)
        q_left, q_right = (q_factors or Factors.of(q)).truncate(rank)  # (..., H, T, r), (..., H, r, d)
        core = q_right @ expand_heads(k_right, q.shape[-3]).transpose(-1, -2)  # (..., H, r, r)
        return q_left @ core, k_left

    def kept_score_energy(self, w: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        box = w.cumsum(-1).cumsum(-2)  # box[i, j] = sum of w[:i+1, :j+1]
        return box[..., ranks - 1, ranks - 1]

    def query_side_flops(self, rank: int, query_len: int, key_len: int, head_dim: int) -> int:
        t, n, d, r = query_len, key_len, head_dim, rank
        return (2 * t * d * d + EIGH_FLOPS_PER_D3 * d**3 + 2 * t * d * r) + (
            2 * t * r * r + 2 * r * r * d + 2 * t * n * r
        )
