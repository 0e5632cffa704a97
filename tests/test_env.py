"""RankSelectionEnv: API conformance, the MDP's behaviour, safety, reproducibility and bad input."""

import math
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import SYNTHETIC
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import drrl_env  # noqa: F401
from drrl_env import analysis as analysis_module
from drrl_env.analysis import RelativeBounds, analyse
from drrl_env.attention.methods import get_method
from drrl_env.attention.workload import Prefill
from drrl_env.env import RankSelectionEnv
from drrl_env.observation import build_observation
from drrl_env.reward import output_error
from drrl_env.sources.base import AttentionTrace
from experiments.trade_off import fixed_rank_terms, trade_off


def _rollout(env, policy, seed=None, options=None):
    obs, info = env.reset(seed=seed, options=options)
    steps = []
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        steps.append((obs, reward, info))
        done = terminated or truncated
    return steps


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_checkers_pass_on_synthetic_source():
    env = RankSelectionEnv(**SYNTHETIC)
    gym_check_env(env)
    sb3_check_env(env)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_checkers_pass_on_default_model(default_env):
    gym_check_env(default_env.unwrapped)
    sb3_check_env(default_env.unwrapped)


def test_make_with_module_prefix_needs_no_prior_import():
    code = (
        "import gymnasium as gym; env = gym.make('drrl_env:DRRL-v0', source='synthetic'); "
        "obs, info = env.reset(seed=0); print(env.spec.id, env.spec.max_episode_steps, sorted(obs))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.startswith("DRRL-v0 24 ['action_mask', 'band_energy'")


def test_default_env_runs_an_episode_on_real_text(default_env):
    env = default_env.unwrapped
    assert env.source.spec.n_layers == 6 and env.ranks == (4, 8, 12, 16, 20, 24, 28, 32)
    steps = _rollout(default_env, lambda obs: 1, seed=3)
    n_segments = env._data.analysis.n_segments
    assert len(steps) == 6 * n_segments <= default_env.spec.max_episode_steps
    assert [s[2]["layer"] for s in steps] == sorted(s[2]["layer"] for s in steps)  # layer-major
    for obs, reward, info in steps:
        assert math.isfinite(reward)
        assert reward == pytest.approx(sum(info["reward_terms"].values()))
        assert default_env.observation_space.contains(obs)


def test_seeded_resets_are_reproducible_under_the_flop_model():
    def run():
        env = RankSelectionEnv(**SYNTHETIC)
        env.action_space.seed(11)
        return _rollout(env, lambda obs: env.action_space.sample(), seed=5)

    first, second = run(), run()
    assert [r for _, r, _ in first] == [r for _, r, _ in second]
    for (a, _, _), (b, _, _) in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_documents_are_analysed_once_and_cached_in_memory_and_on_disk(monkeypatch, tmp_path):
    calls = []
    original = analysis_module.analyse

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr("drrl_env.documents.analyse", counting)
    env = RankSelectionEnv(**SYNTHETIC, cache_dir=str(tmp_path))
    first = [_rollout(env, lambda obs: 0, options={"document": 1}) for _ in range(3)]
    assert len(calls) == 1
    again = _rollout(RankSelectionEnv(**SYNTHETIC, cache_dir=str(tmp_path)), lambda obs: 0, options={"document": 1})
    assert len(calls) == 1  # a new process-like env reads the disk cache
    assert [r for _, r, _ in again] == [r for _, r, _ in first[0]]
    for (a, _, _), (b, _, _) in zip(again, first[0]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    _rollout(
        RankSelectionEnv(**{**SYNTHETIC, "segment_len": 96}, cache_dir=str(tmp_path)),
        lambda obs: 0,
        options={"document": 1},
    )
    assert len(calls) == 2  # other options, other entry
    for entry in (tmp_path / "analysis").glob("*.npz"):
        entry.write_bytes(b"corrupt")
    with pytest.warns(RuntimeWarning, match="damaged analysis cache entry"):
        _rollout(RankSelectionEnv(**SYNTHETIC, cache_dir=str(tmp_path)), lambda obs: 0, options={"document": 1})
    assert len(calls) == 3  # an unreadable entry is recomputed, not trusted


@pytest.mark.parametrize("source", ["synthetic", "model"])
def test_fidelity_rises_with_rank(source, default_env):
    env = RankSelectionEnv(**SYNTHETIC) if source == "synthetic" else default_env.unwrapped
    means = []
    for rank_index in range(len(env.ranks)):
        heads = np.full(env.source.spec.n_heads, rank_index)
        values = [
            output_error(env.analysis(doc), layer, seg, heads).cosine
            for doc in range(4)
            for layer in range(env.source.spec.n_layers)
            for seg in range(env.analysis(doc).n_segments)
        ]
        means.append(np.mean(values))
    assert means == sorted(means) and means[-1] == pytest.approx(1.0) and means[0] < 0.99


def test_default_weights_pose_a_real_trade_off():
    """Three ranks or more are the one-step best somewhere, the oracle is 5% or more above the best
    fixed rank, and the best fixed rank lies strictly inside the grid."""
    terms = fixed_rank_terms(RankSelectionEnv(safety=False, closed_loop=False), documents=12)
    result = trade_off(terms)
    assert result.poses_trade_off, (result.mean_reward, result.headroom, result.one_step_best_counts)
    assert 0 < result.best_fixed < len(terms.ranks) - 1


def test_safety_mask_keeps_full_rank_and_replaces_unsafe_actions():
    env = RankSelectionEnv(**SYNTHETIC, epsilon=0.5, epsilon_min=0.5, epsilon_max=0.5)
    obs, info = env.reset(seed=0)
    replaced = 0
    done = False
    while not done:
        mask = env.action_masks()
        assert mask[-1] and np.array_equal(mask, obs["action_mask"].astype(bool))
        assert np.array_equal(mask, info["action_mask"])
        obs, _, done, _, info = env.step(0)
        if info["action_replaced"]:
            replaced += 1
            safe = [r for r, ok in zip(env.ranks, mask) if ok]
            assert info["rank"] == min(safe) and info["requested_rank"] == env.ranks[0]
            assert info["output_bound"] <= 0.5 + 1e-9
    assert replaced > 0


def test_without_safety_every_action_is_taken():
    env = RankSelectionEnv(**SYNTHETIC, safety=False)
    for _, _, info in _rollout(env, lambda obs: 0, seed=1):
        assert not info["action_replaced"] and info["rank"] == env.ranks[0]


def test_perturbation_term_penalises_rank_changes_only():
    env = RankSelectionEnv(**SYNTHETIC, safety=False, gamma=1.0)
    fixed = _rollout(env, lambda obs: 1, options={"document": 0})
    assert all(info["perturbation_bound"] == 0 for _, _, info in fixed)
    calls = iter(range(1000))
    switching = _rollout(env, lambda obs: next(calls) % 2 * 3, options={"document": 0})
    changed = [info for _, _, info in switching if info["segment"] > 0]
    assert all(info["perturbation_bound"] > 0 for info in changed)


def test_per_head_ranks():
    env = RankSelectionEnv(**SYNTHETIC, per_head=True)
    assert isinstance(env.action_space, gym.spaces.MultiDiscrete)
    heads, n_ranks = env.source.spec.n_heads, len(env.ranks)
    obs, _ = env.reset(seed=0)
    assert obs["action_mask"].shape == (heads * n_ranks,)
    action = np.arange(heads) % n_ranks
    _, reward, _, _, info = env.step(action)
    assert len(info["rank"]) == heads and math.isfinite(reward)


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_env_runs_on_small_causal_models(request, fixture):
    env = RankSelectionEnv(model=request.getfixturevalue(fixture), segment_len=64, min_doc_tokens=32)
    assert env.source.spec.causal
    steps = _rollout(env, lambda obs: 2, seed=0)
    assert steps and all(math.isfinite(r) for _, r, _ in steps)


def test_max_episode_steps_too_small_for_the_configuration_is_reported():
    env = gym.make("DRRL-v0", source="synthetic", segment_len=64)
    with pytest.raises(ValueError, match="max_episode_steps=32"):
        env.reset(seed=0)
    ok = gym.make("DRRL-v0", source="synthetic", segment_len=64, max_episode_steps=32)
    ok.reset(seed=0)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"model": "/no/such/model-folder"}, ValueError, "cannot load model"),
        ({"source": "synthetic", "ranks": (4, 8)}, ValueError, "must end at the head dimension 64"),
        ({"source": "synthetic", "ranks": (8, 4, 64)}, ValueError, "ascending"),
        ({"source": "synthetic", "ranks": (0, 64)}, ValueError, "positive"),
        ({"source": "synthetic", "segment_len": 16}, ValueError, "segment_len=16 is shorter than rank 56"),
        ({"alpha": float("nan")}, ValueError, "alpha must be a finite number"),
        ({"beta": float("inf")}, ValueError, "beta must be a finite number"),
        ({"method": "cur"}, ValueError, "method='cur' is not allowed"),
        ({"corpus": []}, ValueError, "holds no text"),
        ({"corpus": ["too short"], "split": "all"}, ValueError, "min_doc_tokens=64"),
        ({"colour": "red"}, TypeError, "unknown DRRL-v0 option"),
        ({"device": "tpu"}, ValueError, "device must be"),
        ({"epsilon": 1.0, "epsilon_min": 2.0}, ValueError, "epsilon_min <= epsilon"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        RankSelectionEnv(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_without_a_gpu_is_reported():
    with pytest.raises(ValueError, match="CUDA is not available"):
        RankSelectionEnv(source="synthetic", device="cuda")


def test_malformed_device_name_is_reported():
    with pytest.raises(ValueError, match="is not a device name"):
        RankSelectionEnv(source="synthetic", device="cuda:x")


def test_actions_outside_the_space_are_rejected():
    env = RankSelectionEnv(**SYNTHETIC)
    env.reset(seed=0)
    for bad in (-1, len(env.ranks), 2.5, "3"):
        with pytest.raises(ValueError, match="not in the action space"):
            env.step(bad)
    with pytest.raises(ValueError, match="options\\['document'\\]"):
        env.reset(options={"document": 999})


def test_degenerate_attention_gives_finite_observations_and_rewards():
    zeros = torch.zeros(1, 2, 32, 8)
    for queries, keys in [
        (zeros, torch.randn(1, 1, 32, 8)),
        (torch.randn(1, 2, 32, 8), zeros[:, :1]),
        (torch.ones(1, 2, 32, 8), torch.ones(1, 1, 32, 8)),
    ]:
        trace = AttentionTrace(queries, keys, torch.randn(1, 1, 32, 8), torch.tensor([0.35]), False)
        ranks = (2, 4, 8)
        result = analyse(trace, Prefill(16), ranks, get_method("svd"), compress_values=True)
        bounds = RelativeBounds.of(result, clip=1000.0)
        for seg in range(result.n_segments):
            obs = build_observation(
                result.q_spectrum[0, seg],
                result.k_spectrum[0, seg],
                bounds.layer(0),
                seg,
                np.array([0, 1]),
                np.ones(3),
                np.zeros(8),
                np.ones(3),
            )
            assert all(np.isfinite(v).all() for v in obs.values())
            for r in range(3):
                error = output_error(result, 0, seg, np.full(2, r))
                assert math.isfinite(error.cosine) and math.isfinite(error.relative_error)


def test_repeated_tokens_stay_finite():
    env = RankSelectionEnv(corpus=["the " * 300], split="all")
    for obs, reward, _ in _rollout(env, lambda obs: 0, seed=0):
        assert math.isfinite(reward) and all(np.isfinite(v).all() for v in obs.values())


def test_end_of_episode_term_runs_the_model_with_the_chosen_ranks():
    env = RankSelectionEnv(corpus=TEXTS_FOR_END, split="all", min_doc_tokens=16, end_weight=2.0, safety=False)
    full = _rollout(env, lambda obs: len(env.ranks) - 1, options={"document": 0})
    _, reward, info = full[-1]
    assert info["end_fidelity"] == pytest.approx(1.0, abs=1e-5)
    assert info["reward_terms"]["end_fidelity"] == pytest.approx(2 * info["end_fidelity"])
    assert reward == pytest.approx(sum(info["reward_terms"].values()))
    assert all("end_fidelity" not in i for _, _, i in full[:-1])
    low = _rollout(env, lambda obs: 0, options={"document": 0})
    assert low[-1][2]["end_fidelity"] < 0.99
    with pytest.raises(ValueError, match="end_weight > 0 needs a source that runs a model"):
        RankSelectionEnv(source="synthetic", end_weight=1.0)
    with pytest.raises(ValueError, match="closed_loop=True needs a source that runs a model"):
        RankSelectionEnv(source="synthetic", closed_loop=True)


TEXTS_FOR_END = ["Low rank attention keeps the top singular directions of queries and keys. " * 8]


def test_observations_stay_in_the_space_when_epsilon_exceeds_the_bound_clip():
    env = RankSelectionEnv(**SYNTHETIC, bound_clip=10.0, epsilon=50.0, epsilon_min=50.0, epsilon_max=50.0)
    for obs, _, _ in _rollout(env, lambda obs: 0, seed=0):
        assert env.observation_space.contains(obs)


def _documented_info_keys() -> set[str]:
    """The keys listed in the env docstring's ## Info table."""
    section = RankSelectionEnv.__doc__.split("## Info")[1].split("## Arguments")[0]
    rows = [line.strip() for line in section.splitlines() if line.strip().startswith("| ")][1:]  # skip the header
    return {key.strip() for row in rows for key in row.split("|")[1].split(",")}


def test_step_info_holds_exactly_the_documented_keys():
    env = RankSelectionEnv(**SYNTHETIC, end_weight=0.0)
    env.reset(seed=0)
    _, _, _, _, info = env.step(0)
    last_step_only = {"end_fidelity", "end_perplexity", "exact_perplexity"}  # with end_weight > 0
    assert set(info) == _documented_info_keys() - last_step_only
    assert set(info["reward_terms"]) == {"fidelity", "cost", "perturbation"}
