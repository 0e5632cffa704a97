"""The calibrated method (fixed per-layer bases fitted on training documents) and honest timing:
what the latency timer runs is what the env computes, factor upkeep included."""

import numpy as np
import pytest
import torch
from conftest import SYNTHETIC

import drrl_env  # noqa: F401
from drrl_env.attention import linalg
from drrl_env.attention.kernels import causal_mask, full_attention
from drrl_env.attention.methods import get_method
from drrl_env.attention.workload import Prefill
from drrl_env.costs import AttentionShape
from drrl_env.costs.counting import attention_flops, feature_flop_ratio
from drrl_env.costs.latency import LatencyMeasurer
from drrl_env.env import RankSelectionEnv

CORPUS = [
    f"Document {i} says that attention at long context is where low rank may pay, case {i}. " * 12 for i in range(10)
]


def test_bases_come_from_the_training_split_and_are_cached(tmp_path, monkeypatch):
    train = RankSelectionEnv(**SYNTHETIC, method="calibrated", split="train", cache_dir=str(tmp_path))
    bases = train.documents.method.bases
    assert bases["keys"].shape == (2, 2, 16, 16)  # (layers, K/V heads, d, d)
    eye = torch.eye(16).expand(2, 2, 16, 16)
    assert torch.allclose(bases["keys"].transpose(-1, -2) @ bases["keys"], eye, atol=1e-5)  # orthonormal
    monkeypatch.setattr("drrl_env.calibration.fit_bases", lambda traces: pytest.fail("bases were refitted"))
    test = RankSelectionEnv(**SYNTHETIC, method="calibrated", split="test", cache_dir=str(tmp_path))
    assert torch.equal(test.documents.method.bases["values"], bases["values"])  # the test env reuses train's bases


def test_bases_are_ordered_by_calibration_energy_so_ranks_are_nested():
    env = RankSelectionEnv(**SYNTHETIC, method="calibrated", split="train", cache_dir=None)
    trace = env.source.trace(0)
    basis = env.documents.method.bases["keys"]  # (Ly, H_kv, d, d)
    energy = (trace.keys @ basis).square().sum(-2)  # (Ly, H_kv, d) per basis vector, on a calibration document
    assert (energy[..., :4].sum(-1) > energy[..., -4:].sum(-1)).all()


def test_a_projected_stream_projects_each_row_once_and_a_fork_stays_private():
    gen = torch.Generator().manual_seed(0)
    rows, basis = torch.randn(3, 40, 8, generator=gen), torch.linalg.qr(torch.randn(3, 8, 8, generator=gen))[0]
    stream = linalg.StreamingFactors()
    stream.update(rows[:, :16])
    assert torch.allclose(stream.projected(basis), rows[:, :16] @ basis)
    fork = stream.fork()
    fork.update(rows[:, 16:])
    assert torch.allclose(fork.projected(basis), rows @ basis, atol=1e-6)
    assert stream._projections[id(basis)][1].n == 16  # the fork's projections never reached the parent
    later = stream.snapshot()
    stream.update(rows[:, 16:24])
    assert stream.projected(basis).shape[-2] == 24 and later.projected(basis).shape[-2] == 16


@pytest.mark.parametrize("method", ["svd", "calibrated", "loki"])
@pytest.mark.parametrize("causal", [True, False])
def test_the_timed_segment_computes_what_the_env_computes(method, causal):
    """The timer's segment (prefix state built untimed, upkeep replayed) gives the output of the
    same segment in the env's segment loop, at every rank."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(4, 96, 16, generator=gen),
        torch.randn(2, 96, 16, generator=gen),
        torch.randn(2, 96, 16, generator=gen),
    )
    low_rank = get_method(method).timing_instance(2, 16, torch.device("cpu"), torch.float32)
    compress = low_rank.requires.get("compress_values", True)
    workload = Prefill(32)
    *_, last = workload.views(q, k, v, causal, low_rank, layer=0)
    timed = workload.timed_segment(q[:, 64:], k, v, causal, low_rank, compress_values=compress, ranks=(4, 8, 16))
    assert timed.upkeep_share == (1.0 if causal else 32 / 96)
    for rank in (4, 8, 16):
        want = last.attention(rank, 0.25, compress)
        assert torch.allclose(timed.view.attention(rank, 0.25, compress), want, atol=1e-5)
        replayed = timed.upkeep(rank).key_factors.truncate(rank)[0]
        assert torch.allclose(replayed, timed.view.side.key_factors.truncate(rank)[0], atol=1e-6)


def test_calibrated_latency_profile_has_a_ratio_per_rank():
    shape = AttentionShape(
        get_method("calibrated"),
        (4, 8, 16),
        query_len=32,
        key_len=128,
        head_dim=16,
        n_heads=4,
        n_kv_heads=2,
        causal=True,
        compress_values=True,
        segment_len=32,
    )
    timings = LatencyMeasurer(torch.device("cpu"), warmup=1, repeats=3).time_ranks(shape, "float32")
    assert len(timings.ratios) == 3 and timings.ratios[-1].median == 1.0
    assert all(t.median > 0 for t in timings.ratios)


def test_calibrated_runs_in_the_model_forward(tiny_causal_llama):
    env = RankSelectionEnv(
        model=tiny_causal_llama,
        corpus=CORPUS,
        segment_len=32,
        min_doc_tokens=16,
        method="calibrated",
        calibration_documents=2,
        split="train",
        cache_dir=None,
    )
    layers, segments = env.source.spec.n_layers, env.analysis(0).n_segments
    exact = env.documents.exact_outputs(0).perplexity
    full = env.model_outputs(0, np.full((layers, segments), env.source.spec.head_dim)).perplexity
    low = env.model_outputs(0, np.full((layers, segments), env.ranks[1])).perplexity
    assert full == pytest.approx(exact, rel=1e-6) and np.isfinite(low) and low != pytest.approx(exact, rel=1e-6)
    env.reset(options={"document": 0})
    _, reward, *_, info = env.step(1)
    assert np.isfinite(reward) and -1 <= info["fidelity"] <= 1


def test_a_plans_latency_is_measured_in_interleaved_rounds(default_env):
    """The ratio to exact attention comes from the rounds asked for, as a finite median with its spread (how
    alike two measurements are is a property of the machine's load: benchmarks/latency.py reports it)."""
    store = default_env.unwrapped.documents
    plan = np.full((6, store.get(0).analysis.n_segments), 8)
    timing = store.attention_latency(0, plan, rounds=5)
    assert timing.repeats >= 5 and 0 < timing.median < 100 and timing.spread >= 0


def test_decode_windows_follow_an_exact_prompt():
    from drrl_env.attention.workload import Decode

    workload = Decode(64, 0.5)
    assert workload.segments(512) == [(256, 320), (320, 384), (384, 448), (448, 512)]
    assert workload.segments(100) == [(64, 100)]  # the prompt is one segment at least
    segments, ranks = workload.forward_plan(workload.segments(512), np.full((2, 4), 8), 16)
    assert segments[0] == (0, 256) and ranks[:, 0].tolist() == [16, 16] and ranks.shape == (2, 5)
    assert workload.cost_problem(256, 320, 320) == (1, 288)  # one token over the window's mean cache


def test_a_decode_episode_on_a_causal_lm(tiny_causal_llama):
    kwargs = dict(
        model=tiny_causal_llama,
        corpus=CORPUS,
        segment_len=32,
        min_doc_tokens=16,
        split="train",
        cache_dir=None,
        workload="decode",
        method="calibrated",
        calibration_documents=2,
    )
    env = RankSelectionEnv(**kwargs, end_weight=1.0)
    analysis = env.analysis(0)
    assert analysis.segments[0][0] >= 32 and all(b - a <= 48 for a, b in analysis.segments)
    env.reset(options={"document": 0})
    done, steps = False, 0
    while not done:
        _, reward, terminated, truncated, info = env.step(0)
        done, steps = terminated or truncated, steps + 1
    assert steps == 2 * analysis.n_segments and np.isfinite(info["end_perplexity"])
    exact = env.documents.exact_outputs(0).perplexity
    prefill = RankSelectionEnv(**{**kwargs, "workload": "prefill"}).documents.exact_outputs(0).perplexity
    assert exact != pytest.approx(prefill, rel=1e-6)  # decode scores the decoded tokens only
    full = env.model_outputs(0, np.full((2, analysis.n_segments), env.source.spec.head_dim)).perplexity
    assert full == pytest.approx(exact, rel=1e-6)


def test_decode_needs_a_causal_model():
    with pytest.raises(ValueError, match="workload='decode' needs a causal model"):
        RankSelectionEnv(**{**SYNTHETIC, "synthetic_causal": False}, workload="decode", cache_dir=None)


def _loki_by_hand(q, k, v, basis, rank, keys_per_query, scaling, mask):
    """Loki for one query head at a time, by loops: q (H, T, d), k, v (H_kv, N, d), basis (H_kv, d, d)."""
    heads, group = q.shape[0], q.shape[0] // k.shape[0]
    out = torch.empty_like(q)
    for h in range(heads):
        kv, b = h // group, basis[h // group, :, :rank]
        for i in range(q.shape[1]):
            visible = torch.arange(k.shape[1]) if mask is None else mask[i].nonzero()[:, 0]
            approx = (q[h, i] @ b) @ (k[kv, visible] @ b).T
            chosen = visible[approx.topk(min(keys_per_query, len(visible))).indices]
            weights = torch.softmax(scaling * k[kv, chosen] @ q[h, i], 0)
            out[h, i] = weights @ v[kv, chosen]
    return out


@pytest.mark.parametrize("queries, causal", [(1, False), (24, False), (24, True)])
def test_loki_attends_exactly_over_the_keys_its_rank_r_scores_choose(queries, causal):
    """One query (the decode step: gathered keys) and a block (masked exact attention) both equal
    top-k attention computed by hand, grouped-query heads included; f = 1 is exact attention."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (
        torch.randn(6, queries, 16, generator=gen),
        torch.randn(2, 64, 16, generator=gen),
        torch.randn(2, 64, 16, generator=gen),
    )
    stream = linalg.StreamingFactors()
    stream.update(k)
    mask = causal_mask(64 - queries, 64, 64) if causal else None
    for fraction in (0.25, 1.0):
        loki = get_method("loki", loki_keys=fraction).timing_instance(2, 16, torch.device("cpu"), torch.float32)
        got = loki.attention(q, loki.factorize(stream, "keys", 0), v, 0.25, mask, 4)
        want = _loki_by_hand(q, k, v, loki.basis("keys", 0), 4, loki.top_k(64), 0.25, mask)
        assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got, full_attention(q, k, v, 0.25, mask), atol=1e-5)


def test_loki_is_counted_as_a_decode_method():
    """Per decode token loki attends over k keys (FLOPs well below exact); a prefill block runs masked
    exact attention, so it costs more than exact.  The FLOPs follow k."""

    def ratio(query_len, fraction):
        kw = dict(
            query_len=query_len,
            key_len=4096,
            head_dim=64,
            n_heads=9,
            n_kv_heads=3,
            compress_values=False,
            causal=True,
        )
        loki = get_method("loki", loki_keys=fraction)
        return attention_flops(loki, 16, **kw) / attention_flops(loki, 64, **kw)

    assert ratio(1, 0.125) < ratio(1, 0.25) < 0.6 and ratio(512, 0.25) > 1


def test_loki_config_says_what_it_needs(tiny_causal_llama, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="needs compress_values=False"):
        RankSelectionEnv(**SYNTHETIC, method="loki", cache_dir=None)
    with pytest.raises(ValueError, match="needs safety=False"):
        RankSelectionEnv(**SYNTHETIC, method="loki", compress_values=False, cache_dir=None)
    with pytest.raises(ValueError, match="loki_keys"):
        RankSelectionEnv(**SYNTHETIC, method="loki", compress_values=False, safety=False, loki_keys=1.5)
    kwargs = dict(
        model=tiny_causal_llama,
        corpus=CORPUS,
        segment_len=32,
        min_doc_tokens=16,
        split="train",
        cache_dir=str(tmp_path),
        workload="decode",
        calibration_documents=2,
    )
    calibrated = RankSelectionEnv(**kwargs, method="calibrated")
    monkeypatch.setattr("drrl_env.calibration.fit_bases", lambda traces: pytest.fail("loki refitted the bases"))
    env = RankSelectionEnv(**kwargs, method="loki", compress_values=False, safety=False, loki_keys=0.5)
    assert torch.equal(env.documents.method.bases["keys"], calibrated.documents.method.bases["keys"])
    env.reset(options={"document": 0})
    done = False
    while not done:
        observation, reward, terminated, truncated, info = env.step(0)
        done = terminated or truncated
        assert np.isfinite(reward) and observation["action_mask"].all()  # no bound: nothing masked
    assert np.isfinite(info["end_perplexity"])


def test_decode_charges_the_features_once_per_window():
    """A decode step's cost is per token, but its observation is computed once per window of T
    tokens: the features' share is that of the window's attention, not a token's."""
    env = RankSelectionEnv(**SYNTHETIC, workload="decode", cache_dir=None)
    data = env.documents.get(0)
    (start, stop), keys = data.analysis.segments[0], int(data.analysis.key_lens[0])
    share = feature_flop_ratio(env.documents.cost_shape(stop - start, keys))
    assert data.flops[0, -1] == pytest.approx(1 + share) and data.costs[0, -1] == pytest.approx(1 + share)
    assert share < feature_flop_ratio(env.documents.cost_shape(1, keys)) / 10


def test_the_observation_features_are_timed_and_charged(tmp_path, monkeypatch):
    """Under a measured cost, the features' share is timed through the analysis's own feature
    function (``attention/features.py``), side by side with exact attention, and every rank pays it."""
    import drrl_env.costs.latency as latency

    timed = []
    real = latency.observation_features
    monkeypatch.setattr(latency, "observation_features", lambda *args, **kw: timed.append(1) or real(*args, **kw))
    env = RankSelectionEnv(**SYNTHETIC, cost_model="profile", cache_dir=str(tmp_path))
    data = env.documents.get(0)
    (start, stop), keys = data.analysis.segments[0], int(data.analysis.key_lens[0])
    share = env.documents.cost_model.feature_ratio(env.documents.cost_shape(stop - start, keys))
    assert timed and share > 0
    np.testing.assert_allclose(
        data.costs[0] - share,
        env.documents.cost_model.cost_ratios(env.documents.cost_shape(stop - start, keys)),
        rtol=1e-6,
    )
