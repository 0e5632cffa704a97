"""The low-rank method interface and its registry.

A method decides how the keys and values a segment sees are factored (:meth:`LowRankMethod.factorize`:
by default their exact SVD, kept up to date by the workload's streams; a calibrated method projects
them on fixed bases instead), and how the segment's scores are computed at rank r from those factors:

    S_r = s * query_r @ keys_r^T,   (query_r, keys_r) = method.query_key(q, K factors, r)   (T x r)(r x N)

and the output is softmax(S_r) V, or with value compression softmax(S_r) (U^V_r S^V_r) V^V_r^T,
so the (T x N) weights meet an (N x r) factor.  The interface also gives the FLOPs of the query
side and score product, and the kept score energy
B(r) = ||S_r||_F^2 / s^2 from which the exact score change and the output bounds follow
(``linalg.py``), or ``None`` where a method has no such identity (its bounds are then unknown,
shown as the clip value, and the safety mask keeps only full rank).

A method may take env options (``config_options``: EnvConfig fields passed to its constructor,
e.g. loki's ``loki_keys``) and may need others set a certain way (``requires``: checked when the
config is built, with the reason, so that a combination it cannot honour fails at once).

Adding a method: subclass :class:`LowRankMethod` in a new file, decorate it with
:func:`register_method`, and import that file (the built-ins are imported by the package).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from drrl_env.attention import linalg
from drrl_env.attention.kernels import attend
from drrl_env.attention.linalg import Factors, StreamingFactors
from drrl_env.registry import Registry

EIGH_FLOPS_PER_D3 = 9  # symmetric d x d eigendecomposition ~ 9 d^3 flops (tridiagonal QR, textbook estimate)
SOFTMAX_FLOPS = 5  # max, subtract, exp, sum, divide per score


class LowRankMethod(ABC):
    """How a segment's attention is computed at rank r < head_dim (module docstring)."""

    name: ClassVar[str]
    factors_queries: ClassVar[bool] = False  # its low-rank attention factors the segment's queries (reuses Q's SVD)
    needs_calibration: ClassVar[bool] = False  # fitted on calibration documents before use (``calibration.py``)
    config_options: ClassVar[tuple[str, ...]] = ()  # EnvConfig fields its constructor takes (same names)
    requires: ClassVar[dict[str, Any]] = {}  # EnvConfig fields it needs set to these values ...
    requires_reason: ClassVar[str] = ""  # ... and why (the config's error message says it)

    def options(self) -> dict[str, Any]:
        """The values of its ``config_options`` (what, besides the name, rebuilds this method)."""
        return {name: getattr(self, name) for name in self.config_options}

    def factorize(self, stream: StreamingFactors, which: str, layer: int | None) -> Factors:
        """Factors of the rows of ``stream`` (``which`` = "keys" or "values", (..., H_kv, N, d)) of
        ``layer`` (None: every layer, stacked on the leading dim).  Default: the exact SVD from the
        stream's Gram matrix (eigendecomposition 9d^3, projection of all N rows 2Nd^2)."""
        return stream.factors()

    def upkeep_flops(self, rank: int, query_len: int, key_len: int, head_dim: int, causal: bool) -> float:
        """FLOPs per K/V head to keep one factorization (keys, or values) up to date for one segment
        at ``rank``: causal, the T new rows arrive (Gram update 2Td^2, eigendecomposition 9d^3,
        projecting the N rows on the top r vectors 2Ndr); bidirectional, the factorization of all N
        rows (2Nd^2 + 9d^3 + 2Ndr) is made once and the segment is charged its share T/N."""
        t, n, d, r = query_len, key_len, head_dim, rank
        eig = EIGH_FLOPS_PER_D3 * d**3
        return 2 * t * d * d + eig + 2 * n * d * r if causal else (2 * n * d * d + eig + 2 * n * d * r) * t / n

    def feature_flops(self, query_len: int, key_len: int, head_dim: int, causal: bool) -> tuple[float, float]:
        """FLOPs of what the observation needs beyond the method's own work, (per query head, per
        K/V head): Q's spectrum from its Gram matrix (2Td^2 + 9d^3 + 2Td^2; nothing for a method
        that factors the queries anyway) and the score energies of every pair of singular triplets
        (2d^3 + 3d^2) per query head; per K/V head the values' Gram update (2Td^2) and, from it and
        their running sum, their centered spectral norm (9d^3 + d^2) and scale (d), all of it when
        causal; bidirectional, the Gram matrix of all N values (2Nd^2) and the rest are computed
        once for all N/T segments, the segment's share T/N.  The keys' spectrum comes with their
        factorization (its upkeep)."""
        t, n, d = query_len, key_len, head_dim
        q_spectrum = 0 if self.factors_queries else 4 * t * d * d + EIGH_FLOPS_PER_D3 * d**3
        from_gram = EIGH_FLOPS_PER_D3 * d**3 + d * d + d
        per_kv = 2 * t * d * d + from_gram if causal else (2 * n * d * d + from_gram) * t / n
        return q_spectrum + 2 * d**3 + 3 * d * d, per_kv

    def timing_instance(
        self, n_kv_heads: int, head_dim: int, device: torch.device, dtype: torch.dtype
    ) -> LowRankMethod:
        """The method as the latency timer runs it on random data (a calibrated method gets random
        bases of the right shape: its cost does not depend on what the bases hold)."""
        return self

    def state_key(self) -> str:
        """What, besides the options, shapes this instance's outputs (a calibrated method's bases); '' if nothing."""
        return ""

    @abstractmethod
    def query_key(
        self, q: torch.Tensor, k_factors: Factors, rank: int, q_factors: Factors | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Width-r query and key factors whose product is the rank-r scores / s.
        q (..., H, T, d) and key factors per K/V head (..., H_kv, N, .) -> ((..., H, T, r),
        (..., H_kv, N, r)); ``q_factors`` is ``Factors.of(q)`` when the caller already has it (a
        method that factors the queries reuses it)."""

    def kept_score_energy(self, w: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor | None:
        """B(r) for every rank from the pairwise score energies w (..., d, d) (``linalg.score_energy``);
        (..., R), or None (the default) where the method has no such identity."""
        return None

    def score_change_sq(self, q_factors: Factors, k_factors: Factors, ranks: torch.Tensor) -> torch.Tensor | None:
        """||S_a - S_b||_F^2 / s^2 for every pair of ranks, (..., R, R) float64, from the segment's
        query factors (``Factors.of(q)``) and the method's key factors; None where unknown (bounds
        are then infinite and the safety mask keeps full rank only).  Default: |B(a) - B(b)| from
        :meth:`kept_score_energy`."""
        heads = q_factors.right.shape[-3]
        kept = self.kept_score_energy(
            linalg.score_energy(
                q_factors.sv,
                q_factors.right,
                linalg.expand_heads(k_factors.sv, heads, -2),
                linalg.expand_heads(k_factors.right, heads),
            ),
            ranks,
        )
        return None if kept is None else (kept[..., :, None] - kept[..., None, :]).abs()

    def value_change(self, v_factors: Factors, ranks: torch.Tensor, query_len: int) -> torch.Tensor:
        """Bound on ||A_b (V_a - V_b)||_F for every pair of ranks, (..., H_kv, R, R) float64: sqrt(T) times
        ||V_a - V_b||_2, which for truncated SVDs is sigma^V_{min(a, b) + 1} (``linalg.value_change_bound``)."""
        sv = torch.nn.functional.pad(v_factors.sv, (0, v_factors.right.shape[-1] - v_factors.sv.shape[-1]))
        return linalg.value_change_bound(sv, ranks, query_len)

    @abstractmethod
    def query_side_flops(self, rank: int, query_len: int, key_len: int, head_dim: int) -> int:
        """FLOPs per query head of the segment's query-side factor work and of the score product."""

    def output_side_flops(self, rank: int, query_len: int, key_len: int, head_dim: int, compress_values: bool) -> int:
        """FLOPs per query head of the softmax and of A V: 5TN + 2TNd, or with compressed values
        2TNr + 2Trd (the weights meet the (N x r) factor, then the (r x d) one)."""
        t, n, d, r = query_len, key_len, head_dim, rank
        return SOFTMAX_FLOPS * t * n + (2 * t * n * r + 2 * t * r * d if compress_values else 2 * t * n * d)

    def attention(
        self,
        q: torch.Tensor,
        k_factors: Factors,
        values: torch.Tensor,
        scaling: torch.Tensor | float,
        mask: torch.Tensor | None,
        rank: int,
        *,
        v_factors: Factors | None = None,
        q_factors: Factors | None = None,
    ) -> torch.Tensor:
        """One segment's attention at ``rank``.  q (..., H, T, d), values (..., H_kv, N, d) -> (..., H, T, d).

        ``v_factors`` compresses the values to rank r as well; ``q_factors`` (``Factors.of(q)``)
        saves methods that factor the queries from doing it again for every rank.
        """
        query, keys = self.query_key(q, k_factors, rank, q_factors)
        if v_factors is None:
            return attend(query, keys, values, scaling, mask)
        v_left, v_right = v_factors.truncate(rank)  # (..., H_kv, N, r), (..., H_kv, r, d)
        return attend(query, keys, v_left, scaling, mask) @ linalg.expand_heads(v_right, q.shape[-3])  # (.., H, T, d)


_METHODS: Registry[type[LowRankMethod]] = Registry(
    LowRankMethod, "method", "or register a LowRankMethod subclass with drrl_env.attention.register_method"
)
register_method = _METHODS.register
method_names = _METHODS.names
method_class = _METHODS.get  # the class: its capabilities and needs are class attributes


def get_method(name: str, **options: Any) -> LowRankMethod:
    """An instance of the method registered as ``name``, built with ``options`` (its ``config_options``)."""
    return _METHODS.get(name)(**options)


def method_for(name: str, config: Any) -> LowRankMethod:
    """The method ``name`` with its ``config_options`` read from ``config`` (an EnvConfig)."""
    return get_method(name, **{option: getattr(config, option) for option in method_class(name).config_options})
