"""``shared_key``: queries and keys projected on K's top-r right singular vectors.

    S_r = s (Q V^K_r) (U^K_r S^K_r)^T                              (T x r)(r x N)

B(r) = the score energies summed over all query triplets and the first r key triplets.
FLOPs per query head: the projection 2Tdr and the score product 2TNr.
"""

from __future__ import annotations

import torch

from drrl_env.attention.linalg import Factors, expand_heads
from drrl_env.attention.methods.base import LowRankMethod, register_method


@register_method
class SharedKeyMethod(LowRankMethod):
    name = "shared_key"

    def query_key(
        self, q: torch.Tensor, k_factors: Factors, rank: int, q_factors: Factors | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k_left, k_right = k_factors.truncate(rank)  # (..., H_kv, N, r), (..., H_kv, r, d)
        return q @ expand_heads(k_right, q.shape[-3]).transpose(-1, -2), k_left  # (..., H, T, d) @ (..., H, d, r)

    def kept_score_energy(self, w: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        return w.sum(-2).cumsum(-1)[..., ranks - 1]

    def query_side_flops(self, rank: int, query_len: int, key_len: int, head_dim: int) -> int:
        return 2 * query_len * head_dim * rank + 2 * query_len * key_len * rank
