"""``calibrated`` (Eigen Attention-style): keys, queries and values projected on fixed per-layer,
per-K/V-head bases fitted once on calibration documents (``drrl_env/calibration.py``).

    K_r = K B_r,  Q_r = Q B_r,  S_r = s Q_r K_r^T,  O_r = softmax(S_r) (V C_r) C_r^T

B (keys) and C (values) are the eigenvectors of the uncentered second moments K^T K and V^T V
summed over the calibration tokens, by descending eigenvalue, so every rank is a prefix of one
basis (nested): switching rank costs nothing.  The key cache at rank r is K B_r, stored at width r
and extended by the new rows of each segment (2 T d r FLOPs per K/V head,
``StreamingFactors.projected``) instead of being re-factored; nothing is decomposed per segment.
The spectra and bounds of the observation come from the streams' d x d Gram matrices in the basis,
B^T K^T K B (:class:`BasisFactors`), in O(d^3) whatever the cache length.

Bounds.  With q_i = Q b_i and k_i = K b_i, S_a - S_b = s sum_{i in band} q_i k_i^T over the band
(min(a, b), max(a, b)], so ||S_a - S_b||_F^2 / s^2 = sum_{i, j in band} (q_i . q_j)(k_i . k_j):
an identity, from the d x d Gram matrices of Q and K in the basis.  Values: ||V (P_a - P_b)||_2 <=
||V C_band||_F.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cached_property
from typing import ClassVar

import torch

from drrl_env.attention.linalg import Factors, StreamingFactors, expand_heads
from drrl_env.attention.methods.base import register_method
from drrl_env.attention.methods.shared_key import SharedKeyMethod


@register_method
class CalibratedMethod(SharedKeyMethod):
    """Shared-key scores on a fixed basis: ``query_key`` is shared_key's, the factors are projections."""

    name = "calibrated"
    needs_calibration = True
    bases_name: ClassVar[str] = "calibrated"  # the bases it fits: methods sharing it share the cached fit

    def __init__(self) -> None:
        self.bases: dict[str, torch.Tensor] | None = None  # "keys"/"values" -> (Ly, H_kv, d, d), columns = basis
        self._per_layer: dict[str, list[torch.Tensor]] = {}
        self._prefixes: dict[tuple[str, int | None, int], torch.Tensor] = {}

    def set_bases(self, keys: torch.Tensor, values: torch.Tensor) -> CalibratedMethod:
        """Use these bases (Ly, H_kv, d, d) each, orthonormal columns by descending calibration energy."""
        if keys.shape != values.shape or keys.dim() != 4 or keys.shape[-1] != keys.shape[-2]:
            raise ValueError(
                f"bases must both be (layers, kv_heads, d, d), got {tuple(keys.shape)} and {tuple(values.shape)}"
            )
        self.bases = {"keys": keys, "values": values}
        self._per_layer = {which: list(basis.unbind(0)) for which, basis in self.bases.items()}  # stable objects:
        self._prefixes = {}  # the projection caches are keyed by the basis tensor
        return self

    def prefix(self, which: str, layer: int | None, rank: int) -> torch.Tensor:
        """B_r (..., d, r), contiguous, one object per (which, layer, rank): the key of its width-r cache."""
        key = (which, layer, rank)
        if key not in self._prefixes:
            self._prefixes[key] = self.basis(which, layer)[..., :rank].contiguous()
        return self._prefixes[key]

    def basis(self, which: str, layer: int | None) -> torch.Tensor:
        """(Ly, H_kv, d, d) for every layer (layer None), or (H_kv, d, d) for one."""
        if self.bases is None:
            raise RuntimeError(
                "method 'calibrated' has no bases yet: the env fits them on training documents "
                "(drrl_env.calibration.calibrate) before use"
            )
        return self.bases[which] if layer is None else self._per_layer[which][layer]

    def factorize(self, stream: StreamingFactors, which: str, layer: int | None) -> BasisFactors:
        return BasisFactors(stream, self.basis(which, layer), lambda rank: self.prefix(which, layer, rank))

    def upkeep_flops(self, rank: int, query_len: int, key_len: int, head_dim: int, causal: bool) -> float:
        """Projecting the segment's T new rows on B_r: 2 T d r (bidirectional: the N rows once, T/N each)."""
        return 2 * query_len * head_dim * rank

    def feature_flops(self, query_len: int, key_len: int, head_dim: int, causal: bool) -> tuple[float, float]:
        """The base's, plus what a fixed basis has no factorization for: per query head the score
        change's d x d products (B Q^T Q B^T: 4d^3, Q^T Q: 2d^3); per K/V head the keys' Gram update
        (2Td^2; bidirectional 2Nd^2 once, shared T/N) and the keys' and values' Gram matrices in
        their bases (B^T G B: 4d^3 each)."""
        per_query, per_kv = super().feature_flops(query_len, key_len, head_dim, causal)
        t, n, d = query_len, key_len, head_dim
        gram = 2 * t * d * d if causal else 2 * n * d * d * t / n
        return per_query + 6 * d**3, per_kv + gram + 8 * d**3 * (1 if causal else t / n)

    def score_change_sq(self, q_factors: Factors, k_factors: Factors, ranks: torch.Tensor) -> torch.Tensor:
        heads = q_factors.right.shape[-3]
        basis = expand_heads(k_factors.right.double(), heads)  # (..., H, d, d): row i = b_i
        q_gram = q_factors.right.double().transpose(-1, -2) @ (
            q_factors.sv.double()[..., :, None] ** 2 * q_factors.right.double()
        )  # Q^T Q (..., H, d, d)
        k_gram = k_factors.gram  # (..., H_kv, d, d): (K B)^T (K B)
        w = (basis @ q_gram @ basis.transpose(-1, -2)) * expand_heads(k_gram, heads)
        return _band_block_sums(w, ranks)

    def value_change(self, v_factors: Factors, ranks: torch.Tensor, query_len: int) -> torch.Tensor:
        energy = torch.nn.functional.pad(v_factors.sv.double() ** 2, (1, 0)).cumsum(-1)[..., ranks]  # (..., R)
        band = (energy[..., :, None] - energy[..., None, :]).abs().sqrt()  # ||V C_band||_F
        return query_len**0.5 * band

    def timing_instance(
        self, n_kv_heads: int, head_dim: int, device: torch.device, dtype: torch.dtype
    ) -> CalibratedMethod:
        gen = torch.Generator(device=device).manual_seed(0)
        random = torch.randn(2, 1, n_kv_heads, head_dim, head_dim, generator=gen, device=device)
        keys, values = torch.linalg.qr(random)[0].to(dtype)  # orthonormal, any: the cost does not depend on them
        return type(self)(**self.options()).set_bases(keys, values)

    def state_key(self) -> str:
        if self.bases is None:
            return ""
        digest = hashlib.sha256()
        for which in ("keys", "values"):
            digest.update(self.bases[which].detach().cpu().numpy().tobytes())
        return digest.hexdigest()


class BasisFactors:
    """The factors of a stream's rows X on a fixed nested basis B (..., d, d), in the interface of
    ``linalg.Factors``: ``truncate(r)`` = (X B_r, B_r^T) from the stream's width-r cache, which is
    what attention reads; ``gram`` = (X B)^T (X B) = B^T (X^T X) B and ``sv`` = the column norms of
    X B (the energy along each basis vector, the square roots of its diagonal), both from the
    stream's Gram matrix in O(d^3), whatever the number of rows: the analysis's spectra and bounds."""

    def __init__(self, stream: StreamingFactors, basis: torch.Tensor, prefix: Callable[[int], torch.Tensor]) -> None:
        self.stream, self.basis, self.prefix = stream, basis, prefix

    @property
    def right(self) -> torch.Tensor:
        return self.basis.transpose(-1, -2)

    @property
    def rows(self) -> torch.Tensor:
        """X itself (..., N, d), at full width."""
        return self.stream.rows

    @cached_property
    def gram(self) -> torch.Tensor:
        """(..., d, d) float64."""
        basis = self.basis.double()
        return basis.transpose(-1, -2) @ self.stream.gram @ basis

    @cached_property
    def sv(self) -> torch.Tensor:
        return self.gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt().to(self.basis.dtype)

    def truncate(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        basis = self.prefix(rank)  # (..., d, r)
        return self.stream.projected(basis), basis.transpose(-1, -2)


def _band_block_sums(w: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """sum of w[i, j] over i, j in (min(a, b), max(a, b)] for every pair of ranks: (..., d, d) -> (..., R, R)."""
    c = torch.nn.functional.pad(w.cumsum(-1).cumsum(-2), (1, 0, 1, 0))  # c[x, y] = sum of w[:x, :y]
    lo = torch.minimum(ranks[:, None], ranks[None, :])  # (R, R)
    hi = torch.maximum(ranks[:, None], ranks[None, :])
    return (c[..., hi, hi] - c[..., lo, hi] - c[..., hi, lo] + c[..., lo, lo]).clamp_min(0)
