"""The low-rank method interface and its registry.

A method decides how a segment's scores are computed at rank r from the key factorization
(``Factors``, kept up to date by the workload along the sequence):

    S_r = s * query_r @ keys_r^T,   (query_r, keys_r) = method.query_key(q, K factors, r)   (T x r)(r x N)

and the output is softmax(S_r) V, or with value compression softmax(S_r) (U^V_r S^V_r) V^V_r^T,
so the (T x N) weights meet an (N x r) factor.  The interface also gives the FLOPs of the query
side and score product, and the kept score energy
B(r) = ||S_r||_F^2 / s^2 from which the exact score change and the output bounds follow
(``linalg.py``), or ``None`` where a method has no such identity (its bounds are then unknown,
shown as the clip value, and the safety mask keeps only full rank).

Adding a method: subclass :class:`LowRankMethod` in a new file, decorate it with
:func:`register_method`, and import that file (the built-ins are imported by the package).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from drrl_env.attention.kernels import attend
from drrl_env.attention.linalg import Factors
from drrl_env.registry import Registry


class LowRankMethod(ABC):
    """How a segment's attention is computed at rank r < head_dim (module docstring)."""

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False  # fitted on calibration documents before use

    @abstractmethod
    def query_key(self, q: torch.Tensor, k_factors: Factors, rank: int,
                  q_factors: Factors | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Width-r query and key factors whose product is the rank-r scores / s.
        q (..., T, d) -> ((..., T, r), (..., N, r)); ``q_factors`` is ``Factors.of(q)`` when the
        caller already has it (a method that factors the queries reuses it)."""

    @abstractmethod
    def kept_score_energy(self, w: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor | None:
        """B(r) for every rank from the pairwise score energies w (..., d, d) (``linalg.score_energy``);
        (..., R), or None where the method has no score-change identity."""

    @abstractmethod
    def query_side_flops(self, rank: int, query_len: int, key_len: int, head_dim: int) -> int:
        """FLOPs per query head of the segment's query-side factor work and of the score product."""

    def attention(self, q: torch.Tensor, k_factors: Factors, values: torch.Tensor, scaling: torch.Tensor | float,
                  mask: torch.Tensor | None, rank: int, *, v_factors: Factors | None = None,
                  q_factors: Factors | None = None) -> torch.Tensor:
        """One segment's attention at ``rank``.  q (..., T, d), values (..., N, d) -> (..., T, d).

        ``v_factors`` compresses the values to rank r as well; ``q_factors`` (``Factors.of(q)``)
        saves methods that factor the queries from doing it again for every rank.
        """
        query, keys = self.query_key(q, k_factors, rank, q_factors)
        if v_factors is None:
            return attend(query, keys, values, scaling, mask)
        v_left, v_right = v_factors.truncate(rank)  # (..., N, r), (..., r, d)
        return attend(query, keys, v_left, scaling, mask) @ v_right  # (..., T, r) @ (..., r, d)


_METHODS: Registry[type[LowRankMethod]] = Registry(
    LowRankMethod, "method", "or register a LowRankMethod subclass with drrl_env.attention.register_method")
register_method = _METHODS.register
method_names = _METHODS.names


def get_method(name: str) -> LowRankMethod:
    """An instance of the method registered as ``name``."""
    return _METHODS.get(name)()
