"""Extension points: a new low-rank method, workload, cost model, source or baseline is one class and one
registration (the README's "Extending" recipes, each followed here with a toy extension)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import SYNTHETIC

import drrl_env  # noqa: F401
from drrl_env.attention import LowRankMethod, get_method, register_method
from drrl_env.attention.linalg import Factors
from drrl_env.attention.workload import Prefill, register_workload, segment_bounds
from drrl_env.costs import CostModel, register_cost_model
from drrl_env.costs.counting import attention_flops
from drrl_env.sources import SyntheticSource, register_source


@register_method
class LeadingCoordinates(LowRankMethod):
    """Toy method: scores from the first r coordinates of the queries and of the (rebuilt) keys."""

    name = "test_leading_coordinates"

    def query_key(
        self, q: torch.Tensor, k_factors: Factors, rank: int, q_factors: Factors | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = k_factors.left @ k_factors.right  # (..., N, d)
        return q[..., :rank], keys[..., :rank]

    def query_side_flops(self, rank: int, query_len: int, key_len: int, head_dim: int) -> int:
        return 2 * query_len * key_len * rank


@register_workload
class DoubledSegments(Prefill):
    """Toy workload: prefill in segments twice the configured length (half the decisions)."""

    name = "test_doubled_segments"

    def segments(self, seq_len: int) -> list[tuple[int, int]]:
        return segment_bounds(seq_len, 2 * self.segment_len)


@register_cost_model
class ConstantCost(CostModel):
    """Toy cost model: every rank below full costs half of exact attention; only short keys."""

    name = "test_constant"
    deterministic = True
    measures_device = False
    max_key_len = 256

    def cost_ratios(self, shape):
        return np.where(np.asarray(shape.ranks) < shape.head_dim, 0.5, 1.0)


def test_a_registered_method_runs_an_episode():
    env = gym.make("DRRL-v0", **SYNTHETIC, method="test_leading_coordinates", safety=False)
    obs, _ = env.reset(seed=0)
    total, done, fidelities = 0.0, False, []
    while not done:
        obs, reward, terminated, truncated, info = env.step(0)
        total += reward
        fidelities.append(info["fidelity"])
        done = terminated or truncated
        assert env.observation_space.contains(obs)
    assert np.isfinite(total) and max(fidelities) < 1.0  # rank 2 of 16 coordinates is not exact
    assert obs["output_bound"].max() == pytest.approx(np.log1p(1000.0))  # unknown bound shown clipped
    flops = attention_flops(
        get_method("test_leading_coordinates"),
        2,
        query_len=64,
        key_len=128,
        head_dim=16,
        n_heads=4,
        n_kv_heads=2,
        compress_values=True,
        causal=True,
    )
    assert flops > 0
    assert isinstance(get_method("test_leading_coordinates"), LeadingCoordinates)


def test_a_registered_workload_sets_the_episodes_decisions():
    steps = {}
    for workload in ("prefill", "test_doubled_segments"):
        env = gym.make("DRRL-v0", **{**SYNTHETIC, "synthetic_seq_len": 256}, workload=workload)
        env.reset(seed=0)
        done, steps[workload] = False, 0
        while not done:
            _, reward, terminated, truncated, info = env.step(0)
            steps[workload] += 1
            done = terminated or truncated
        assert np.isfinite(reward) and 0 < info["fidelity"] <= 1.0
    assert steps["prefill"] == 2 * steps["test_doubled_segments"]  # 4 segments of 64 tokens, 2 of 128 (x layers)
    with pytest.raises(ValueError, match="workload='nope' is not allowed.*'prefill', 'decode'"):
        gym.make("DRRL-v0", **SYNTHETIC, workload="nope")


def test_unknown_bounds_leave_only_full_rank_safe():
    env = gym.make("DRRL-v0", **SYNTHETIC, method="test_leading_coordinates")
    _, info = env.reset(seed=0)
    assert info["action_mask"].tolist() == [0] * (len(env.unwrapped.ranks) - 1) + [1]


def test_a_registered_cost_model_is_asked_for_its_capabilities():
    env = gym.make("DRRL-v0", **SYNTHETIC, cost_model="test_constant")
    obs, _ = env.reset(seed=0)
    features = obs["cost"][-1] - 1.0  # every rank also pays the observation's features (their FLOP share)
    assert features > 0
    np.testing.assert_allclose(
        obs["cost"], [0.5 + features] * (len(env.unwrapped.ranks) - 1) + [1.0 + features], rtol=1e-6
    )
    assert not env.spec.nondeterministic
    with pytest.raises(ValueError, match="measures key lengths up to 256"):
        gym.make("DRRL-v0", **{**SYNTHETIC, "synthetic_seq_len": 512}, cost_model="test_constant")


@register_source
class FlatSpectra(SyntheticSource):
    """Toy source: the synthetic generator with flat singular spectra (no rank is enough but the full one)."""

    name = "test_flat_spectra"

    @classmethod
    def from_config(cls, cfg, device):
        source = SyntheticSource.from_config(cfg, device)
        source.decay = 0.0
        return source


def test_a_registered_source_feeds_the_environment():
    fidelity = {}
    for source in ("synthetic", "test_flat_spectra"):
        env = gym.make("DRRL-v0", **{**SYNTHETIC, "source": source, "synthetic_decay": 2.0}, cache_dir=None)
        env.reset(seed=0)
        fidelity[source] = env.step(0)[4]["fidelity"]  # the lowest rank of the first (layer, segment)
    assert fidelity["test_flat_spectra"] < fidelity["synthetic"]  # flat spectra lose more at low rank
    with pytest.raises(ValueError, match="closed_loop=True needs a source that runs a model"):
        gym.make("DRRL-v0", **{**SYNTHETIC, "source": "test_flat_spectra"}, closed_loop=True)


def test_names_are_checked_against_the_registries():
    with pytest.raises(ValueError, match="source='nope' is not allowed.*'model', 'synthetic'"):
        gym.make("DRRL-v0", **{**SYNTHETIC, "source": "nope"})
    with pytest.raises(ValueError, match="method='nope' is not allowed.*'svd'"):
        gym.make("DRRL-v0", **SYNTHETIC, method="nope")
    with pytest.raises(ValueError, match="cost_model='nope' is not allowed.*'flops'"):
        gym.make("DRRL-v0", **SYNTHETIC, cost_model="nope")
    with pytest.raises(ValueError, match="already registered"):
        register_method(type("Clash", (LeadingCoordinates,), {"name": "svd"}))


def test_a_registered_rank_baseline_is_made_from_its_spec_and_tuned_by_compare():
    from agents.baselines import baseline_names, make_baseline
    from agents.policy import RANK_BASELINES, RankPolicy
    from experiments.compare import tune_baselines

    @RANK_BASELINES.register
    class LowestRank(RankPolicy):
        """Toy baseline: the k-th lowest rank of the grid."""

        name, argument = "test_lowest", "K"

        def __init__(self, k: int) -> None:
            self.k = k

        @classmethod
        def from_spec(cls, env, arg, seed):
            return cls(int(arg))

        @classmethod
        def tuning_grid(cls, env):
            return ["test_lowest:0", "test_lowest:1"]

        def act(self, obs):
            return self.k

    try:
        env = gym.make("DRRL-v0", **SYNTHETIC)
        assert "test_lowest:K" in baseline_names()
        obs, _ = env.reset(seed=0)
        assert make_baseline("test_lowest:1", env).predict(obs)[0] == 1
        with pytest.raises(ValueError, match="needs an argument: test_lowest:K"):
            make_baseline("test_lowest", env)
        tuned = tune_baselines("DRRL-v0", {**SYNTHETIC, "cache_dir": None}, documents=1)
        assert [spec.split(":")[0] for spec in tuned] == ["fixed", "energy", "energy-cost", "test_lowest", "static"]
    finally:
        RANK_BASELINES.unregister("test_lowest")
    with pytest.raises(TypeError, match="role='oracle-ish' is not allowed"):
        type("BadRole", (RankPolicy,), {"role": "oracle-ish"})
