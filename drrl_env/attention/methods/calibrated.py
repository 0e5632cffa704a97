"""``calibrated`` (Eigen Attention-style): keys, queries and values projected on fixed per-layer,
per-K/V-head bases fitted once on calibration documents (``drrl_env/calibration.py``).

    K_r = K B_r,  Q_r = Q B_r,  S_r = s Q_r K_r^T,  O_r = softmax(S_r) (V C_r) C_r^T

B (keys) and C (values) are the eigenvectors of the uncentered second moments K^T K and V^T V
summed over the calibration tokens, by descending eigenvalue, so every rank is a prefix of one
basis (nested): switching rank costs nothing, and the key cache is the projected keys K B, extended
by the new rows of each segment (2 T d^2 FLOPs per K/V head, ``StreamingFactors.projected``)
instead of being re-factored.  Nothing is decomposed per segment.

Bounds.  With q_i = Q b_i and k_i = K b_i, S_a - S_b = s sum_{i in band} q_i k_i^T over the band
(min(a, b), max(a, b)], so ||S_a - S_b||_F^2 / s^2 = sum_{i, j in band} (q_i . q_j)(k_i . k_j):
an identity, from the d x d Gram matrices of Q and K in the basis.  Values: ||V (P_a - P_b)||_2 <=
||V C_band||_F.
"""

from __future__ import annotations

import hashlib

import torch

from drrl_env.attention.linalg import Factors, StreamingFactors, expand_heads
from drrl_env.attention.methods.base import register_method
from drrl_env.attention.methods.shared_key import SharedKeyMethod


@register_method
class CalibratedMethod(SharedKeyMethod):
    """Shared-key scores on a fixed basis: ``query_key`` is shared_key's, the factors are projections."""

    name = "calibrated"
    needs_calibration = True
    uses_gram = False

    def __init__(self) -> None:
        self.bases: dict[str, torch.Tensor] | None = None  # "keys"/"values" -> (Ly, H_kv, d, d), columns = basis
        self._per_layer: dict[str, list[torch.Tensor]] = {}

    def set_bases(self, keys: torch.Tensor, values: torch.Tensor) -> CalibratedMethod:
        """Use these bases (Ly, H_kv, d, d) each, orthonormal columns by descending calibration energy."""
        if keys.shape != values.shape or keys.dim() != 4 or keys.shape[-1] != keys.shape[-2]:
            raise ValueError(f"bases must both be (layers, kv_heads, d, d), got {tuple(keys.shape)} and "
                             f"{tuple(values.shape)}")
        self.bases = {"keys": keys, "values": values}
        self._per_layer = {which: list(basis.unbind(0)) for which, basis in self.bases.items()}  # stable objects:
        return self  # the projection cache is keyed by the basis tensor

    def basis(self, which: str, layer: int | None) -> torch.Tensor:
        """(Ly, H_kv, d, d) for every layer (layer None), or (H_kv, d, d) for one."""
        if self.bases is None:
            raise RuntimeError("method 'calibrated' has no bases yet: the env fits them on training documents "
                               "(drrl_env.calibration.calibrate) before use")
        return self.bases[which] if layer is None else self._per_layer[which][layer]

    def factorize(self, stream: StreamingFactors, which: str, layer: int | None) -> Factors:
        basis = self.basis(which, layer)
        left = stream.projected(basis)  # (..., H_kv, N, d), the cache stored in the basis
        return Factors(left, basis.transpose(-1, -2), torch.linalg.vector_norm(left, dim=-2))

    def upkeep_flops(self, rank: int, query_len: int, key_len: int, head_dim: int, causal: bool) -> float:
        """Projecting the segment's T new rows on the basis: 2 T d^2 (bidirectional: the N rows once, T/N each)."""
        return 2 * query_len * head_dim * head_dim

    def score_change_sq(self, q_factors: Factors, k_factors: Factors, ranks: torch.Tensor) -> torch.Tensor:
        heads = q_factors.right.shape[-3]
        basis = expand_heads(k_factors.right.double(), heads)  # (..., H, d, d): row i = b_i
        q_gram = q_factors.right.double().transpose(-1, -2) @ (q_factors.sv.double()[..., :, None] ** 2
                                                               * q_factors.right.double())  # Q^T Q (..., H, d, d)
        k_left = k_factors.left.double()
        w = (basis @ q_gram @ basis.transpose(-1, -2)) * expand_heads(k_left.transpose(-1, -2) @ k_left, heads)
        return _band_block_sums(w, ranks)

    def value_change(self, v_factors: Factors, ranks: torch.Tensor, query_len: int) -> torch.Tensor:
        energy = torch.nn.functional.pad(v_factors.sv.double() ** 2, (1, 0)).cumsum(-1)[..., ranks]  # (..., R)
        band = (energy[..., :, None] - energy[..., None, :]).abs().sqrt()  # ||V C_band||_F
        return query_len ** 0.5 * band

    def timing_instance(self, n_kv_heads: int, head_dim: int, device: torch.device, dtype: torch.dtype
                        ) -> CalibratedMethod:
        gen = torch.Generator(device=device).manual_seed(0)
        random = torch.randn(2, 1, n_kv_heads, head_dim, head_dim, generator=gen, device=device)
        keys, values = torch.linalg.qr(random)[0].to(dtype)  # orthonormal, any: the cost does not depend on them
        return CalibratedMethod().set_bases(keys, values)

    def state_key(self) -> str:
        if self.bases is None:
            return ""
        digest = hashlib.sha256()
        for which in ("keys", "values"):
            digest.update(self.bases[which].detach().cpu().numpy().tobytes())
        return digest.hexdigest()


def _band_block_sums(w: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """sum of w[i, j] over i, j in (min(a, b), max(a, b)] for every pair of ranks: (..., d, d) -> (..., R, R)."""
    c = torch.nn.functional.pad(w.cumsum(-1).cumsum(-2), (1, 0, 1, 0))  # c[x, y] = sum of w[:x, :y]
    lo = torch.minimum(ranks[:, None], ranks[None, :])  # (R, R)
    hi = torch.maximum(ranks[:, None], ranks[None, :])
    return (c[..., hi, hi] - c[..., lo, hi] - c[..., hi, lo] + c[..., lo, lo]).clamp_min(0)
