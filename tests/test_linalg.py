"""Low-rank kernels and perturbation quantities: exact where they claim to be, bounds where they claim to be."""

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from drrl_env.attention import linalg
from drrl_env.attention.kernels import attend, causal_mask, full_attention
from drrl_env.attention.linalg import Factors
from drrl_env.attention.methods import get_method
from drrl_env.costs.counting import attention_flops


def _random_qkv(seed, heads, t, n, d, decay=0.7):
    gen = torch.Generator().manual_seed(seed)
    sigma = torch.arange(1, d + 1, dtype=torch.float32) ** -decay * 3

    def draw(rows):
        return (torch.randn(heads, rows, d, generator=gen) * sigma) @ torch.linalg.qr(torch.randn(d, d, generator=gen))[
            0
        ]

    return draw(t), draw(n), torch.randn(heads, n, d, generator=gen)


def _truncate(x, r):
    u, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return (u[..., :r] * s[..., None, :r]) @ vh[..., :r, :]


def _low_rank_scores(q, qf, kf, s, r, method):
    query, keys = _method(method, q.shape[0], q.shape[-1]).query_key(q, kf, r, qf)  # (..., T, r), (..., N, r)
    return query @ keys.transpose(-1, -2) * s


def _method(name, heads, d):
    """The method; ``calibrated`` with bases that are not the data's SVD."""
    method = get_method(name)
    if name == "calibrated":
        bases = torch.linalg.qr(torch.randn(2, 1, heads, d, d, generator=torch.Generator().manual_seed(11)))[0]
        method.set_bases(bases[0], bases[1])  # random orthonormal bases, (1, heads, d, d) each
    return method


def _method_factors(method, k, v):
    """The key and value factors ``method`` uses for rows k, v (heads, n, d)."""
    streams = [linalg.StreamingFactors(), linalg.StreamingFactors()]
    streams[0].update(k)
    streams[1].update(v)
    return method.factorize(streams[0], "keys", 0), method.factorize(streams[1], "values", 0)


def _lapack_factors(x):
    """Reference factors from LAPACK's SVD (not the Gram route under test)."""
    u, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return Factors(u * s[..., None, :], vh, s)


def test_factors_reconstruct_and_truncate_to_rank_r_shapes():
    q, _, _ = _random_qkv(0, 3, 40, 40, 16)
    factors = Factors.of(q)
    assert torch.allclose(factors.left @ factors.right, q, atol=1e-4)
    left, right = factors.truncate(5)
    assert left.shape == (3, 40, 5) and right.shape == (3, 5, 16)
    assert torch.allclose((left @ right).double(), _truncate(q, 5), atol=1e-4)
    assert torch.allclose(factors.sv.double(), torch.linalg.svdvals(q.double()), atol=1e-4)


@pytest.mark.parametrize("method", ["svd", "shared_key"])
def test_low_rank_scores_match_their_definition(method):
    q, k, _ = _random_qkv(1, 2, 24, 48, 16)
    qf, kf = Factors.of(q), Factors.of(k)
    r, s = 6, 0.25
    got = _low_rank_scores(q, qf, kf, s, r, method)
    if method == "svd":
        want = _truncate(q, r) @ _truncate(k, r).transpose(-1, -2) * s
    else:
        want = q.double() @ _truncate(k, r).transpose(-1, -2) * s
    assert got.shape == (2, 24, 48)
    assert torch.allclose(got.double(), want, atol=1e-3)


@pytest.mark.parametrize(
    "method,compress", [("svd", False), ("svd", True), ("shared_key", False), ("shared_key", True)]
)
def test_matmul_flops_come_from_rank_r_factors(method, compress):
    """The counted matmuls of one kernel call are the rank-r products, far below the 4TNd of exact attention.

    The math backend spells the fused attention out as matmuls, which FlopCounterMode counts (it
    does not count the fused CPU kernel)."""
    heads, t, n, d, r = 2, 32, 96, 16, 4
    q, k, v = _random_qkv(2, heads, t, n, d)
    qf, kf, vf = Factors.of(q), Factors.of(k), Factors.of(v)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        get_method(method).attention(q, kf, v, 1.0, None, r, v_factors=vf if compress else None, q_factors=qf)
    scores = (2 * t * r * r + 2 * r * r * d + 2 * t * n * r) if method == "svd" else (2 * t * d * r + 2 * t * n * r)
    values = 2 * t * n * r + 2 * t * r * d if compress else 2 * t * n * d
    assert counter.get_total_flops() == heads * (scores + values)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as exact:
        full_attention(q, k, v, 1.0, None)
    assert exact.get_total_flops() == heads * 4 * t * n * d


def test_flop_model_counts_exact_attention_and_falls_with_rank():
    kw = dict(query_len=128, key_len=4096, head_dim=64, n_heads=8, n_kv_heads=2, compress_values=True, causal=True)
    full = attention_flops(get_method("svd"), 64, **kw)
    assert full == 8 * (4 * 128 * 4096 * 64 + 5 * 128 * 4096)
    low = [attention_flops(get_method("svd"), r, **kw) for r in (8, 16, 32)]
    assert low == sorted(low) and low[0] < 0.3 * full
    with pytest.raises(ValueError, match="rank 65"):
        attention_flops(get_method("svd"), 65, **kw)


def test_tail_and_band_energies_are_exact():
    x = torch.randn(3, 50, 12, generator=torch.Generator().manual_seed(3))
    ranks = torch.tensor([2, 5, 12])
    energy = linalg.cumulative_energy(torch.linalg.svdvals(x), ranks)
    band = linalg.band_norm(energy)  # (3, R, R)
    for a, ra in enumerate(ranks.tolist()):
        for b, rb in enumerate(ranks.tolist()):
            direct = torch.linalg.matrix_norm(_truncate(x, ra) - _truncate(x, rb))
            assert torch.allclose(band[:, a, b], direct, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method", ["svd", "shared_key", "calibrated"])
@pytest.mark.parametrize("seed", range(4))
def test_score_change_identity_is_exact(method, seed):
    q, k, v = _random_qkv(seed, 2, 20 + seed * 7, 64, 16, decay=0.3 + 0.3 * seed)
    low_rank = _method(method, 2, 16)
    qf, (kf, _) = Factors.of(q), _method_factors(low_rank, k, v)
    ranks = torch.tensor([2, 4, 9, 16])
    predicted = low_rank.score_change_sq(qf, kf, ranks).sqrt()  # (2, R, R), ||S_a - S_b||_F / s
    scores = {r: _low_rank_scores(q, qf, kf, 1.0, r, method).double() for r in ranks.tolist()}
    for a, ra in enumerate(ranks.tolist()):
        for b, rb in enumerate(ranks.tolist()):
            direct = torch.linalg.matrix_norm(scores[ra] - scores[rb])
            assert torch.allclose(predicted[:, a, b], direct, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("method", ["svd", "shared_key", "calibrated"])
def test_output_bound_holds_on_a_sweep_of_shapes(method, compress):
    """Seeded sweep: every pair of ranks, causal and not; measured ||O_a - O_b||_F <= bound."""
    ratios = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        t, n, d = int(rng.integers(4, 40)), int(rng.integers(40, 120)), int(rng.choice([8, 16, 32]))
        q, k, v = _random_qkv(seed, 2, t, n, d, decay=float(rng.uniform(0.0, 1.5)))
        q = q * float(rng.uniform(0.2, 4))  # sharp and flat softmax
        causal = bool(seed % 2)
        mask = causal_mask(n - t, n, n) if causal else None
        s = d**-0.5
        low_rank = _method(method, 2, d)
        qf, (kf, vf) = Factors.of(q), _method_factors(low_rank, k, v)
        ranks = torch.tensor(sorted({1, d // 4, d // 2, d}))
        values = linalg.StreamingFactors()
        values.update(v)
        bound = linalg.output_bound_pairs(
            low_rank.score_change_sq(qf, kf, ranks), torch.tensor(s), values.centered_norm()
        )
        if compress:
            bound = bound + low_rank.value_change(vf, ranks, t)
        outputs = [
            full_attention(q, k, v, s, mask)
            if r == d
            else low_rank.attention(q, kf, v, s, mask, r, v_factors=vf if compress else None)
            for r in ranks.tolist()
        ]
        for a in range(len(ranks)):
            for b in range(len(ranks)):
                measured = torch.linalg.matrix_norm((outputs[a] - outputs[b]).double())
                assert (measured <= bound[:, a, b] * (1 + 1e-4) + 1e-5).all(), (seed, a, b)
                if a != b:
                    ratios.append((bound[:, a, b] / measured.clamp_min(1e-12)).median().item())
    assert np.median(ratios) > 1


def test_softmax_step_never_exceeds_half_the_score_change():
    gen = torch.Generator().manual_seed(5)
    for _ in range(200):
        x, y = torch.randn(2, 30, generator=gen) * torch.rand(1, generator=gen) * 10
        change = torch.linalg.vector_norm(torch.softmax(x, -1) - torch.softmax(y, -1))
        assert change <= linalg.SOFTMAX_LIPSCHITZ * torch.linalg.vector_norm(x - y) + 1e-7


def test_zero_and_rank_deficient_inputs_stay_finite():
    zeros = torch.zeros(2, 16, 8)
    factors = Factors.of(zeros)
    assert torch.isfinite(factors.left).all() and (factors.sv == 0).all()
    out = get_method("svd").attention(zeros, factors, zeros, 0.5, None, 3, v_factors=factors)
    assert torch.isfinite(out).all()
    rank_one = torch.ones(2, 16, 8)
    assert torch.isfinite(Factors.of(rank_one).left).all()
    assert (linalg.relative(np.zeros(3), np.zeros(3), clip=5.0) == 0).all()
    assert (linalg.relative(np.ones(3), np.zeros(3), clip=5.0) == 5.0).all()


def test_non_finite_input_is_rejected():
    bad = torch.ones(2, 4, 4)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        Factors.of(bad)


def test_masked_attention_ignores_future_keys():
    q, k, v = _random_qkv(7, 1, 8, 8, 8)
    mask = causal_mask(0, 8, 8)
    out = attend(q, k, v, 1.0, mask)
    k2, v2 = k.clone(), v.clone()
    k2[:, 5:], v2[:, 5:] = 100.0, -100.0
    out2 = attend(q, k2, v2, 1.0, mask)
    assert torch.allclose(out[:, :5], out2[:, :5]) and not torch.allclose(out[:, 5:], out2[:, 5:])


def test_streaming_factors_track_a_full_svd_of_the_prefix():
    """Synthetic keys, 8192 tokens in 128-token segments: retained energy within 1e-4 of a full SVD."""
    from drrl_env.sources.synthetic import SyntheticSource

    keys = (
        SyntheticSource(
            n_layers=1,
            n_heads=2,
            n_kv_heads=2,
            head_dim=64,
            seq_len=8192,
            decay=1.0,
            head_variety=0.5,
            causal=True,
            n_documents=1,
            seed=0,
        )
        .trace(0)
        .keys[0]
    )  # (2, L, 64)
    stream = linalg.StreamingFactors(refresh_every=16)
    for start in range(0, 8192, 128):
        stream.update(keys[:, start : start + 128])
        if start % 2048 == 0 or start + 128 == 8192:
            exact = _lapack_factors(keys[:, : start + 128])
            for rank in (8, 32):
                angle, energy_error = linalg.subspace_error(stream.factors(), exact, rank)
                assert (energy_error < 1e-4).all() and (angle < 1e-3).all()
    prefix = stream.factors()
    assert torch.allclose((prefix.left @ prefix.right).double(), keys.double(), atol=1e-3)


def test_randomized_factors_approach_the_truncated_svd():
    q, _, _ = _random_qkv(9, 2, 300, 300, 64, decay=1.2)
    approx = linalg.randomized_factors(q, 8, generator=torch.Generator().manual_seed(0))
    assert approx.left.shape == (2, 300, 8) and approx.right.shape == (2, 8, 64)
    exact = torch.linalg.svdvals(q.double())
    best = torch.linalg.matrix_norm(q.double() - _truncate(q, 8))
    err = torch.linalg.matrix_norm(q.double() - (approx.left @ approx.right).double())
    assert (err <= best * 1.01 + 1e-6).all()
    assert torch.allclose(approx.sv.double(), exact[:, :8], rtol=1e-3)


def test_power_iteration_estimates_the_spectral_norm_from_below():
    x, _, _ = _random_qkv(4, 3, 200, 200, 32, decay=0.5)
    sigma, u, v = linalg.power_iteration(x, iters=30, generator=torch.Generator().manual_seed(0))
    exact = torch.linalg.matrix_norm(x.double(), ord=2)
    assert (sigma.double() <= exact * (1 + 1e-6)).all()
    assert torch.allclose(sigma.double(), exact, rtol=1e-3)
    assert torch.allclose((x @ v[..., None])[..., 0], sigma[..., None] * u, atol=1e-3 * exact.max().item())
    zeros = linalg.power_iteration(torch.zeros(2, 5, 4))[0]
    assert torch.equal(zeros, torch.zeros(2))


def test_output_bound_holds_on_real_minilm_attention(default_env):
    env = default_env.unwrapped
    heads = env.source.spec.n_heads
    for doc in range(3):
        data = env.documents.get(doc)
        for layer in range(env.source.spec.n_layers):
            for seg in range(data.analysis.n_segments):
                for index in range(len(env.ranks)):
                    per_head = np.sqrt(data.analysis.err_sq[layer, seg, index])  # (H,)
                    assert (
                        per_head
                        <= data.analysis.pair_bound[layer, seg, np.arange(heads), index, -1] * (1 + 1e-4) + 1e-6
                    ).all()


def test_streaming_factors_on_real_minilm_keys(default_env):
    keys = default_env.unwrapped.source.trace(0).keys  # (6, 12, L, 32)
    stream = linalg.StreamingFactors()
    for start in range(0, keys.shape[2], 64):
        stream.update(keys[:, :, start : start + 64])
        exact = _lapack_factors(keys[:, :, : start + 64])
        for rank in (4, 16):
            _, energy_error = linalg.subspace_error(stream.factors(), exact, rank)
            assert (energy_error < 1e-4).all()


def test_a_stream_folds_its_moments_once_and_snapshots_share_them():
    """The Gram matrix and row sum are folded when first asked (once per decision, not per row): a
    later snapshot extends what an earlier one folded, a fork keeps its own, and the centered norm
    and mean square norm equal their direct values."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(2, 50, 8, generator=gen) + 3.0  # a mean to remove
    stream = linalg.StreamingFactors()
    stream.update(rows[:, :20])
    early = stream.snapshot()
    assert torch.allclose(early.gram, rows[:, :20].double().mT @ rows[:, :20].double())
    stream.update(rows[:, 20:50])
    later = stream.snapshot()
    assert later._moments is early._moments and later._moments.n == 20  # shared, not folded until asked
    centered = (rows - rows.mean(-2, keepdim=True)).double()
    assert torch.allclose(later.centered_norm().double(), torch.linalg.matrix_norm(centered, ord=2), rtol=1e-5)
    assert torch.allclose(later.mean_square_norm(), rows.double().square().sum(-1).mean(-1))
    assert torch.allclose(early.gram, rows[:, :20].double().mT @ rows[:, :20].double())  # still its own rows
    fork = later.fork()
    fork.update(rows[:, :5])
    fork.fold()
    assert later._moments.n == 50 and fork._moments.n == 55
