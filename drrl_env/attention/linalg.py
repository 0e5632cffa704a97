"""Spectra, truncation energies and the perturbation of low-rank attention, for every rank at once.

Notation: Q (T x d) are a segment's queries, K and V (N x d) the keys and values it may attend to,
s the score scaling, S = s Q K^T the scores, A = softmax(S) row-wise (masked entries excluded),
O = A V.  X = sum_i sigma^X_i u^X_i (a^X_i)^T is the SVD, X_r keeps the top r terms, and

    tail_X(r)     = ||X - X_r||_F      = sqrt(sum_{i > r} (sigma^X_i)^2)      (Eckart-Young; Eq. 8)
    band_X(r, r') = ||X_r - X_{r'}||_F = sqrt(sum_{min < i <= max} (sigma^X_i)^2)

are exact; ``band_X(r, d) = tail_X(r)``.

Score change (exact).  With the core M_ij = a^Q_i . a^K_j and W_ij = (sigma^Q_i sigma^K_j M_ij)^2,
S = s sum_ij sigma^Q_i sigma^K_j M_ij u^Q_i (u^K_j)^T is a sum of Frobenius-orthonormal terms, so

    method "svd"        (S_r = s Q_r K_r^T):      ||S_r||_F^2 = s^2 sum_{i <= r, j <= r} W_ij
    method "shared_key" (S_r = s Q K_r^T):        ||S_r||_F^2 = s^2 sum_{all i, j <= r} W_ij

and, the kept index sets being nested, ||S_r - S_{r'}||_F = s sqrt(|B(r) - B(r')|) with B(r) the
sum above (``LowRankMethod.kept_score_energy``).  This is an identity, not a bound, at O(d^2) per head.

Output change (bound, the paper's Eq. 9 ||dO|| <= ||dA|| ||V||): row-wise softmax has Jacobian
diag(p) - p p^T, whose spectral norm is at most 1/2 (x^T J x is the variance of x under p, at most
||x||^2 / 2), so ||A - A'||_F <= ||S - S'||_F / 2.  Rows of A - A' sum to zero, so
(A - A') V = (A - A')(V - 1 mu^T) for the mean row mu of V, and

    ||O_r - O_{r'}||_F <= 1/2 ||S_r - S_{r'}||_F ||V - 1 mu^T||_2.

Masked score entries are equal in both (excluded) and do not change either statement.

With compressed values (O_r = A_r V_r, V_r = V P_r the rank-r truncation of V):
O_a - O_b = (A_a - A_b) V_a + A_b (V_a - V_b).  The first term is bounded as above, since
V_a - 1 (mu P_a)^T = (V - 1 mu^T) P_a has spectral norm <= ||V - 1 mu^T||_2; the second by
||A_b||_F ||V_a - V_b||_2 <= sqrt(T) sigma^V_{min(a, b) + 1} (each row of A_b is a probability
vector, so ||A_b||_F <= sqrt(T)).  The two add.

How tight (``python benchmarks/bound_tightness.py``, 20 documents, relative output error of all
heads at one rank): never violated; median bound / measured 200-470 on all-MiniLM-L6-v2 attention
(peaked softmax rows make the worst-case constants loose) and 14-21 on the synthetic source.  The
score change is exact (``tests/test_linalg.py`` checks it to 1e-3 against direct computation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SOFTMAX_LIPSCHITZ = 0.5
TINY = 1e-30


@dataclass(frozen=True)
class Factors:
    """X = left @ right exactly: left = U S (..., n, d), right = V^T (..., d, d), sv (..., d)
    the singular values, descending (zeros beyond min(n, d))."""

    left: torch.Tensor
    right: torch.Tensor
    sv: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor) -> Factors:
        """Factor x (..., n, d) through the eigendecomposition of its d x d Gram matrix.

        X^T X = V diag(sigma^2) V^T in float64, then U S = X V.  For n >> d this is far cheaper
        than an SVD of X; singular values below ~1e-8 sigma_1 lose relative accuracy.
        """
        _check_finite(x)
        x64 = x.double()
        return cls.from_gram(x, x64.transpose(-1, -2) @ x64)

    @classmethod
    def from_gram(cls, x: torch.Tensor, gram: torch.Tensor) -> Factors:
        """Factors of x (..., n, d) given its Gram matrix X^T X (..., d, d), float64."""
        evals, evecs = torch.linalg.eigh(gram)  # (..., d), (..., d, d) ascending
        evecs = evecs.flip(-1)  # descending
        sv = evals.flip(-1).clamp_min(0).sqrt()
        return cls((x.double() @ evecs).to(x.dtype), evecs.transpose(-1, -2).to(x.dtype), sv.to(x.dtype))

    def truncate(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(left_r (..., n, r), right_r (..., r, d)); left_r @ right_r is the best rank-r approximation."""
        return self.left[..., :rank], self.right[..., :rank, :]


def expand_heads(x: torch.Tensor, n_heads: int, dim: int = -3) -> torch.Tensor:
    """``x`` with its K/V-head dim ``dim`` repeated up to ``n_heads`` query heads (grouped-query
    attention: query head h reads K/V head h // (n_heads / n_kv_heads)).  For small per-head
    matrices (bases, spectra, bounds); keys and values themselves stay per K/V head (``kernels.attend``)."""
    group = n_heads // x.shape[dim]
    return x if group == 1 else x.repeat_interleave(group, dim=dim)


def randomized_factors(
    x: torch.Tensor, rank: int, oversample: int = 8, power_iters: int = 2, generator: torch.Generator | None = None
) -> Factors:
    """Top-``rank`` factors of x (..., n, d) by a randomized range finder (Halko et al. 2011).

    Y = X Omega (Omega: d x (rank + oversample) Gaussian), ``power_iters`` rounds of
    Y <- X (X^T Y) with re-orthonormalization, Q = orth(Y), then the small SVD of Q^T X.
    Cost O(n d k) instead of O(n d^2); the error is close to sigma_{rank+1} for fast-decaying spectra.
    """
    _check_finite(x)
    k = min(rank + oversample, *x.shape[-2:])
    omega = torch.randn(*x.shape[:-2], x.shape[-1], k, generator=generator, dtype=x.dtype, device=x.device)
    basis, _ = torch.linalg.qr(x @ omega)  # (..., n, k)
    for _ in range(power_iters):
        basis, _ = torch.linalg.qr(x @ (x.transpose(-1, -2) @ basis))
    u, sv, vh = torch.linalg.svd(basis.transpose(-1, -2) @ x, full_matrices=False)  # (..., k, k), (..., k), (..., k, d)
    left = (basis @ u)[..., :rank] * sv[..., None, :rank]  # (..., n, rank)
    return Factors(left, vh[..., :rank, :], sv[..., :rank])


class RowBuffer:
    """Rows (..., n, d) appended block by block into storage that doubles when full, so that an
    append copies the block only (amortized O(T d)), as a preallocated KV cache does; ``rows`` is
    a view of the first n.  Copies made with :meth:`view` share the storage: rows past a copy's n
    may be written by another copy, never rows before it."""

    def __init__(self) -> None:
        self._storage: torch.Tensor | None = None
        self.n = 0

    @property
    def rows(self) -> torch.Tensor | None:
        return None if self._storage is None else self._storage[..., : self.n, :]

    def view(self) -> RowBuffer:
        copy = RowBuffer()
        copy._storage, copy.n = self._storage, self.n
        return copy

    def append(self, block: torch.Tensor) -> None:
        t = block.shape[-2]
        if self._storage is None or self.n + t > self._storage.shape[-2]:
            grown = block.new_empty(*block.shape[:-2], max(2 * (self.n + t), 64), block.shape[-1])
            if self.n:
                grown[..., : self.n, :] = self._storage[..., : self.n, :]
            self._storage = grown
        self._storage[..., self.n : self.n + t, :] = block
        self.n += t


@dataclass
class _Moments:
    """X^T X and 1^T X (float64) of the first ``n`` rows of a stream, folded in ``folds`` steps."""

    gram: torch.Tensor | None = None
    row_sum: torch.Tensor | None = None
    n: int = 0
    folds: int = 0

    def copy(self) -> _Moments:
        return _Moments(self.gram, self.row_sum, self.n, self.folds)


class StreamingFactors:
    """The factorization of a matrix that grows by row blocks (keys arriving segment by segment).

    Keeps the rows seen so far (the key cache, a :class:`RowBuffer`), and, when first asked after
    rows arrived, their Gram matrix G = X^T X and their sum 1^T X in float64: the rows not yet
    folded in are added (O(T d^2) for T new rows) instead of re-decomposing the prefix, so a
    consumer that asks once per decision pays once per decision, not once per row.  ``factors()``
    re-diagonalizes G (O(d^3)) and projects the rows (O(N d^2)).  Eigenvectors come out orthonormal
    at every call, so the basis cannot drift; rounding in G can, so G is rebuilt from the rows every
    ``refresh_every`` folds (``tests/test_linalg.py`` measures the retained-energy error against a
    full SVD: below 1e-10 relative).  ``projected(basis)`` keeps rows @ basis for a fixed basis the
    same way (a key cache stored in a calibrated basis), projecting each row once.
    """

    def __init__(self, refresh_every: int = 64) -> None:
        self.refresh_every = refresh_every
        self._rows = RowBuffer()
        self._moments = _Moments()  # shared with snapshots: a later one extends what an earlier one folded
        self._projections: dict[int, tuple[torch.Tensor, RowBuffer]] = {}  # id(basis) -> (basis, rows @ basis)

    @property
    def rows(self) -> torch.Tensor | None:
        """(..., N, d) the rows so far."""
        return self._rows.rows

    def snapshot(self) -> StreamingFactors:
        """The stream as it is now, sharing the moments and the projection cache: a later, longer
        snapshot extends the moments and projections an earlier one made, as a key cache stored in
        a basis does."""
        copy = StreamingFactors(self.refresh_every)
        copy._rows, copy._moments, copy._projections = self._rows.view(), self._moments, self._projections
        return copy

    def fork(self) -> StreamingFactors:
        """A private continuation of the stream (a timer replays the same segment's upkeep from the
        same prefix, round after round): its moments and projections stay its own.  It appends into
        the shared storage past the parent's rows, so the parent must not grow while its forks are in use."""
        copy = self.snapshot()
        copy._moments = self._moments.copy()
        copy._projections = {key: (basis, done.view()) for key, (basis, done) in self._projections.items()}
        return copy

    def projected(self, basis: torch.Tensor) -> torch.Tensor:
        """rows @ basis (..., N, d) for a fixed ``basis`` (..., d, d): only rows not projected before
        (by this stream or a snapshot sharing its cache) are multiplied, 2 d^2 FLOPs per new row."""
        if self.rows is None:
            raise RuntimeError("StreamingFactors.projected() before any update()")
        n = self._rows.n
        _, done = self._projections.setdefault(
            id(basis), (basis, RowBuffer())
        )  # the basis kept alive: id stays its own
        if done.n < n:
            done.append(self.rows[..., done.n :, :] @ basis)
        return done.rows[..., :n, :]

    def update(self, block: torch.Tensor) -> None:
        """Append rows ``block`` (..., T, d)."""
        _check_finite(block)
        self._rows.append(block)

    @property
    def gram(self) -> torch.Tensor:
        """X^T X (..., d, d) float64 of the rows so far (rows not yet folded in are added now)."""
        return self._folded().gram

    @property
    def row_sum(self) -> torch.Tensor:
        """1^T X (..., d) float64 of the rows so far."""
        return self._folded().row_sum

    def fold(self) -> None:
        """Folds the rows that arrived since the last fold into the moments (what asking for them does)."""
        self._folded()

    def _folded(self) -> _Moments:
        if self.rows is None:
            raise RuntimeError("StreamingFactors: no rows yet; update() first")
        moments, n = self._moments, self._rows.n
        if moments.n > n:  # a longer snapshot folded past this one's rows: its own, from scratch
            rows = self.rows.double()
            return _Moments(rows.transpose(-1, -2) @ rows, rows.sum(-2), n)
        if moments.n < n:
            if moments.gram is None or (moments.folds + 1) % self.refresh_every == 0:
                rows = self.rows.double()
                moments.gram, moments.row_sum = rows.transpose(-1, -2) @ rows, rows.sum(-2)
            else:
                block = self.rows[..., moments.n :, :].double()
                moments.gram = moments.gram + block.transpose(-1, -2) @ block
                moments.row_sum = moments.row_sum + block.sum(-2)
            moments.n, moments.folds = n, moments.folds + 1
        return moments

    def factors(self) -> Factors:
        return Factors.from_gram(self.rows, self.gram)

    def centered_norm(self) -> torch.Tensor:
        """||X - 1 mu^T||_2 (...) from the Gram matrix and the row sum: the largest eigenvalue of
        G - s s^T / N, in O(d^3) whatever N."""
        moments = self._folded()
        centered = moments.gram - moments.row_sum[..., :, None] * moments.row_sum[..., None, :] / self._rows.n
        return torch.linalg.eigvalsh(centered)[..., -1].clamp_min(0).sqrt().to(self.rows.dtype)

    def mean_square_norm(self) -> torch.Tensor:
        """mean_j ||x_j||^2 (...) float64, from the Gram matrix's trace."""
        return self.gram.diagonal(dim1=-2, dim2=-1).sum(-1) / self._rows.n


def subspace_error(approx: Factors, exact: Factors, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(largest principal angle in radians, relative error of the retained energy) of the top-``rank``
    right singular subspaces of two factorizations of the same matrix.  Both (...)."""
    cosines = torch.linalg.svdvals(
        approx.right[..., :rank, :].double() @ exact.right[..., :rank, :].double().transpose(-1, -2)
    )
    angle = torch.arccos(cosines[..., -1].clamp(-1.0, 1.0))
    kept_a = (approx.sv[..., :rank].double() ** 2).sum(-1)
    kept_e = (exact.sv[..., :rank].double() ** 2).sum(-1)
    return angle, (kept_a - kept_e).abs() / kept_e.clamp_min(TINY)


def power_iteration(
    x: torch.Tensor, iters: int = 30, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top singular triplet (sigma_1 (...), u (..., n), v (..., d)) of x (..., n, d), batched.

    A fixed number of rounds v <- X^T X v / ||X^T X v||.  The estimate never exceeds sigma_1 and,
    for a start vector with cosine c to v_1, satisfies
    sigma_1^2 - sigma_est^2 <= sigma_1^2 tan^2(theta_0) (sigma_2 / sigma_1)^(4 iters) with
    cos(theta_0) = c; it is a lower estimate, so bounds that need an upper value of ||.||_2 use
    :meth:`StreamingFactors.centered_norm` (exact, from the d x d Gram matrix) instead.
    """
    _check_finite(x)
    v = torch.randn(*x.shape[:-2], x.shape[-1], generator=generator, dtype=x.dtype, device=x.device)
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(TINY)
    for _ in range(iters):
        u = (x @ v[..., None])[..., 0]  # (..., n)
        v = (x.transpose(-1, -2) @ u[..., None])[..., 0]  # (..., d)
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(TINY)
    u = (x @ v[..., None])[..., 0]
    sigma = torch.linalg.vector_norm(u, dim=-1)
    return sigma, u / sigma[..., None].clamp_min(TINY), v


def _check_finite(x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"matrix of shape {tuple(x.shape)} has NaN or inf entries; factor finite data only")


def cumulative_energy(sv: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Energy kept by each rank: E(r) = sum_{i <= r} sigma_i^2.

    sv: (..., d) descending; ranks: (R,) integers in 0..d.  Returns (..., R).
    """
    cum = torch.nn.functional.pad((sv.double() ** 2).cumsum(-1), (1, 0))  # (..., d + 1), E(0) = 0
    return cum[..., ranks]


def band_norm(energy: torch.Tensor) -> torch.Tensor:
    """||X_r - X_{r'}||_F for every pair of ranks from their kept energies.

    energy: (..., R) as from :func:`cumulative_energy`.  Returns (..., R, R), entry [a, b] for
    ranks (ranks[a], ranks[b]); the diagonal is 0.
    """
    diff = energy[..., :, None] - energy[..., None, :]  # (..., R, R)
    return diff.abs().clamp_min(0).sqrt()


def score_energy(sv_q: torch.Tensor, right_q: torch.Tensor, sv_k: torch.Tensor, right_k: torch.Tensor) -> torch.Tensor:
    """W_ij = (sigma^Q_i sigma^K_j a^Q_i . a^K_j)^2, the score energy of each pair of singular triplets.

    sv_q (..., m_q), right_q (..., m_q, d), sv_k (..., m_k), right_k (..., m_k, d) from the SVDs of
    Q and K.  Returns (..., d, d) float64, zero-padded where m < d; W.sum() = ||Q K^T||_F^2.
    """
    core = right_q.double() @ right_k.double().transpose(-1, -2)  # (..., m_q, m_k)
    w = (sv_q.double()[..., :, None] * core * sv_k.double()[..., None, :]).square()
    d = right_q.shape[-1]
    return torch.nn.functional.pad(w, (0, d - w.shape[-1], 0, d - w.shape[-2]))


def output_bound_pairs(change_sq: torch.Tensor, scaling: torch.Tensor, v_norm: torch.Tensor) -> torch.Tensor:
    """Bound on ||O_a - O_b||_F for every pair of candidate ranks.

    change_sq: (..., R, R) ||S_a - S_b||_F^2 / s^2 from ``LowRankMethod.score_change_sq``; scaling
    and v_norm (= ||V - 1 mu^T||_2) broadcastable to (...).  Returns (..., R, R):
    1/2 s ||S_a - S_b||_F / s ||V - 1 mu^T||_2.
    """
    return (SOFTMAX_LIPSCHITZ * scaling * v_norm).double()[..., None, None] * change_sq.clamp_min(0).sqrt()


def value_change_bound(sv_v: torch.Tensor, ranks: torch.Tensor, query_len: int) -> torch.Tensor:
    """sqrt(T) sigma^V_{min(a, b) + 1} for a != b, 0 on the diagonal (module docstring).

    sv_v: (..., d) singular values of V, descending; ranks (R,).  Returns (..., R, R) float64.
    """
    padded = torch.nn.functional.pad(sv_v.double(), (0, 1))  # (..., d + 1), sigma_{d+1} = 0
    low = torch.minimum(ranks[:, None], ranks[None, :])  # (R, R)
    bound = query_len**0.5 * padded[..., low]  # (..., R, R); padded[r] = sigma_{r+1}
    return bound * (1 - torch.eye(len(ranks), dtype=bound.dtype, device=bound.device))


def relative(numerator: np.ndarray, denominator: np.ndarray, clip: float) -> np.ndarray:
    """``numerator / denominator`` clipped to [0, clip]; 0/0 is 0 and x/0 is ``clip`` (never NaN)."""
    num, den = np.broadcast_arrays(np.asarray(numerator, np.float64), np.asarray(denominator, np.float64))
    out = np.where(num > TINY, clip, 0.0)
    np.divide(num, den, out=out, where=den > TINY)
    return out.clip(0.0, clip)
