"""``loki`` (Singhania et al., NeurIPS 2024): scores on the rank-r calibrated key basis choose each
query's top-k keys; exact attention runs over those keys alone.

    S~ = (Q B_r) (K B_r)^T                    (T x N, width r)  approximate scores, B = the key basis
    J_i = the k = ceil(f N) visible keys of largest S~_i       f = ``loki_keys``
    O_i = softmax(s q_i K_J^T) V_J                              exact scores and values of the chosen keys

B is calibrated's key basis (``calibration.py``, the same fit), so every rank is a prefix of it and
the key cache keeps K B_r beside the full-width keys, extended by each segment's new rows (2Tdr per
K/V head, the upkeep).  Values are never compressed (``requires`` compress_values=False).

One function, two implementations, by the number of queries in the call:

- one query (a decode step, which is what the decode workload's cost times): the k chosen keys and
  values are gathered and attended over: per query head 2dr (projection) + 2Nr (approximate scores)
  + 2N (selection) + 4kd + 5k (exact attention over k keys);
- a block of T queries (prefill segments, a decode window's fidelity): exact attention over all N
  keys with the keys not chosen masked out, the same outputs with no saving: 2Tdr + 2TNr + 2TN
  + 4TNd + 5TN.  Loki is a decode method: in prefill it costs more than exact attention.

Bounds: none.  The output error depends on the scores of the keys left out, which the method never
computes, so there is no score-change identity; under a safety mask it could only ever play full
rank, hence ``requires`` safety=False.
"""

from __future__ import annotations

import math

import torch

from drrl_env.attention.kernels import attend
from drrl_env.attention.linalg import Factors
from drrl_env.attention.methods.base import EIGH_FLOPS_PER_D3, SOFTMAX_FLOPS, register_method
from drrl_env.attention.methods.calibrated import BasisFactors, CalibratedMethod

SELECT_FLOPS_PER_KEY = 2  # expected comparisons of a quickselect of the top k among N scores


@register_method
class LokiMethod(CalibratedMethod):
    """Top-k keys by rank-r scores on calibrated key bases, exact attention over them (module docstring)."""

    name = "loki"
    config_options = ("loki_keys",)
    requires = {"compress_values": False, "safety": False}
    requires_reason = (
        "loki attends over exact values, and has no perturbation bound (its error depends on the "
        "scores of the keys it leaves out, which it never computes)"
    )

    def __init__(self, loki_keys: float = 0.25) -> None:
        super().__init__()
        if isinstance(loki_keys, bool) or not isinstance(loki_keys, (int, float)) or not 0 < loki_keys <= 1:
            raise ValueError(
                f"loki_keys is the fraction of visible keys each query attends to, in (0, 1]; got {loki_keys!r}"
            )
        self.loki_keys = float(loki_keys)

    def top_k(self, key_len: int) -> int:
        """Keys each query attends to among ``key_len``: ceil(f N), at least 1."""
        return min(key_len, max(1, math.ceil(self.loki_keys * key_len)))

    def attention(
        self,
        q: torch.Tensor,
        k_factors: BasisFactors,
        values: torch.Tensor,
        scaling: torch.Tensor | float,
        mask: torch.Tensor | None,
        rank: int,
        *,
        v_factors: Factors | None = None,
        q_factors: Factors | None = None,
    ) -> torch.Tensor:
        """q (..., H, T, d), values (..., H_kv, N, d) -> (..., H, T, d) (module docstring)."""
        if v_factors is not None:
            raise ValueError("method 'loki' attends over exact values: run it with compress_values=False")
        query, keys_r = self.query_key(q, k_factors, rank)  # (..., H, T, r), (..., H_kv, N, r)
        keys = k_factors.rows  # (..., H_kv, N, d)
        heads, t, n = q.shape[-3], q.shape[-2], keys.shape[-2]
        group = heads // keys.shape[-3]
        approx = (
            query.reshape(*query.shape[:-3], -1, group * t, query.shape[-1])  # (..., H_kv, G T, r)
            @ keys_r.transpose(-1, -2)
        ).view(*query.shape[:-1], n)  # (..., H_kv, r, N) -> (..., H, T, N)
        chosen = self.top_k(n)
        if t == 1 and mask is None:  # one query: attend over the gathered keys
            index = approx.topk(chosen, dim=-1, sorted=False).indices  # (..., H, 1, k)
            return attend(q, _gather(keys, index), _gather(values, index), scaling, None)
        if mask is not None:
            approx = approx.masked_fill(~mask, -torch.inf)
        keep = approx >= approx.topk(chosen, dim=-1).values[..., -1:]  # (..., H, T, N): the top k of each row
        return attend(q, keys, values, scaling, keep if mask is None else keep & mask)

    def score_change_sq(self, q_factors: Factors, k_factors: Factors, ranks: torch.Tensor) -> None:
        return None

    def query_side_flops(self, rank: int, query_len: int, key_len: int, head_dim: int) -> int:
        """Projection 2Tdr, approximate scores 2TNr, selection 2TN, exact scores 2Tkd (one query) or
        2TNd (a block, masked)."""
        t, n, d, r = query_len, key_len, head_dim, rank
        attended = self.top_k(n) if t == 1 else n
        return 2 * t * d * r + 2 * t * n * r + SELECT_FLOPS_PER_KEY * t * n + 2 * t * attended * d

    def output_side_flops(self, rank: int, query_len: int, key_len: int, head_dim: int, compress_values: bool) -> int:
        """Softmax and A V over the attended keys: 5Tk + 2Tkd (one query; k = N for a masked block)."""
        attended = self.top_k(key_len) if query_len == 1 else key_len
        return SOFTMAX_FLOPS * query_len * attended + 2 * query_len * attended * head_dim

    def feature_flops(self, query_len: int, key_len: int, head_dim: int, causal: bool) -> tuple[float, float]:
        """No bounds to compute: per query head Q's spectrum (4Td^2 + 9d^3); per K/V head the keys'
        and values' Gram updates (2Td^2 each), the keys' spectrum in their basis (B^T G B: 4d^3) and
        the values' scale (d), all of it when causal; bidirectional, the Gram matrices of all N
        rows (2Nd^2 each) and the rest once for all segments, the segment's share T/N."""
        t, n, d = query_len, key_len, head_dim
        per_kv = 4 * t * d * d + 4 * d**3 + d if causal else (4 * n * d * d + 4 * d**3 + d) * t / n
        return 4 * t * d * d + EIGH_FLOPS_PER_D3 * d**3, per_kv


def _gather(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The rows (..., H_kv, N, d) each query head chose, index (..., H, 1, k) -> (..., H, k, d)
    (query head h reads K/V head h // (H / H_kv)).  One ``index_select`` per K/V head, on its (N, d)
    rows in place (a cache's rows are a view of a longer buffer): nothing but the chosen rows is copied."""
    n, d = rows.shape[-2:]
    per_kv = rows.reshape(-1, n, d)  # (B H_kv, N, d), a view
    wanted = index.reshape(per_kv.shape[0], -1)  # (..., H, 1, k) -> (B H_kv, G k)
    picked = torch.empty(*wanted.shape, d, dtype=rows.dtype, device=rows.device)  # (B H_kv, G k, d)
    for head in range(per_kv.shape[0]):
        torch.index_select(per_kv[head], 0, wanted[head], out=picked[head])
    return picked.view(*index.shape[:-2], index.shape[-1], d)  # (..., H, k, d)
