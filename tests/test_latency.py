"""Measured cost models: the cached per-device profile, live timing, and their errors."""

from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import SYNTHETIC

import drrl_env.costs.latency as latency
from drrl_env.attention.methods import get_method
from drrl_env.costs import AttentionShape
from drrl_env.costs.latency import LatencyMeasurer, LatencyProfile
from drrl_env.env import RankSelectionEnv

SHAPE = AttentionShape(
    get_method("svd"),
    (4, 16),
    query_len=64,
    key_len=64,
    head_dim=16,
    n_heads=4,
    n_kv_heads=2,
    causal=True,
    compress_values=True,
    segment_len=64,
)


def test_profile_is_cached_on_disk_and_reused(tmp_path):
    env = RankSelectionEnv(**SYNTHETIC, cost_model="profile", cache_dir=str(tmp_path), feature_cost=False)
    obs, _ = env.reset(seed=0)
    first = [p.measured for p in env.cost_model.profiles.values()]
    assert sum(first) > 0 and list((tmp_path / "latency").glob("*.json"))
    again = RankSelectionEnv(**SYNTHETIC, cost_model="profile", cache_dir=str(tmp_path), feature_cost=False)
    obs2, _ = again.reset(seed=0)
    assert [p.measured for p in again.cost_model.profiles.values()] == [0]  # nothing re-measured
    np.testing.assert_array_equal(obs["cost"], obs2["cost"])
    assert obs["cost"][-1] == 1.0
    refreshed = RankSelectionEnv(**SYNTHETIC, cost_model="profile", cache_dir=str(tmp_path), profile_refresh=True)
    refreshed.reset(seed=0)
    assert sum(p.measured for p in refreshed.cost_model.profiles.values()) > 0


def test_profile_key_changes_with_device_and_threads(tmp_path, monkeypatch):
    measurer = LatencyMeasurer(torch.device("cpu"))
    base = LatencyProfile(SHAPE, "float32", measurer, tmp_path).path
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    assert LatencyProfile(SHAPE, "float32", measurer, tmp_path).path != base
    monkeypatch.undo()
    monkeypatch.setattr(latency, "_cpu_name", lambda: "another processor")
    assert LatencyProfile(SHAPE, "float32", measurer, tmp_path).path != base
    monkeypatch.undo()
    assert LatencyProfile(SHAPE, "float32", measurer, tmp_path).path == base


def test_profile_interpolates_between_profiled_lengths(tmp_path):
    profile = LatencyProfile(SHAPE, "float32", LatencyMeasurer(torch.device("cpu"), warmup=1, repeats=3), tmp_path)
    assert profile.grid(64) == [64] and profile.grid(100) == [64, 128] and profile.grid(1000) == [512, 1024]
    profile.table = {
        64: {"seconds": [1.0, 2.0], "ratios": [0.5, 1.0]},
        128: {"seconds": [3.0, 6.0], "ratios": [0.7, 1.0]},
    }
    np.testing.assert_allclose(profile.seconds(96), [2.0, 4.0])
    np.testing.assert_allclose(profile.ratios(96), [0.6, 1.0])
    with pytest.raises(ValueError, match="outside the profile's range"):
        profile.grid(10**6)


def test_flop_model_is_deterministic_and_measured_models_mark_the_spec():
    flops = gym.make("DRRL-v0", **SYNTHETIC)
    flops.reset(seed=0)
    assert not flops.spec.nondeterministic and flops.unwrapped.cost_model.deterministic
    live = gym.make("DRRL-v0", **SYNTHETIC, cost_model="live", feature_cost=False)
    obs, _ = live.reset(seed=0)
    assert live.spec.nondeterministic and live.unwrapped.spec.nondeterministic
    assert obs["cost"][-1] == 1.0 and (obs["cost"] > 0).all()


def test_exact_attention_latency_grows_with_sequence_length():
    """64x the keys: a coarse property of the measurer, not a speed assertion."""
    measurer = LatencyMeasurer(torch.device("cpu"), warmup=2, repeats=7)
    short = measurer.time_ranks(replace(SHAPE, ranks=(16,), key_len=128), "float32").seconds[0].median
    long = measurer.time_ranks(replace(SHAPE, ranks=(16,), key_len=8192), "float32").seconds[0].median
    assert long > 2 * short


def test_target_seq_len_reports_cost_at_the_deployment_length():
    plain = RankSelectionEnv(**SYNTHETIC)
    target = RankSelectionEnv(**SYNTHETIC, target_seq_len=8192)
    cost_plain = plain.reset(seed=0)[0]["cost"]
    cost_target = target.reset(seed=0)[0]["cost"]
    assert cost_target[0] < cost_plain[0]  # long keys: low rank saves more
    _, _, _, _, info = target.step(0)
    assert info["flop_ratio"] == pytest.approx(cost_target[0], rel=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"cost_model": "measured"}, "cost_model='measured' is not allowed"),
        ({"dtype": "float64"}, "dtype='float64' is not allowed"),
        ({"cost_model": "profile", "target_seq_len": 10**6}, "measures key lengths up to 65536"),
        ({"target_seq_len": 0}, "target_seq_len must be a positive integer"),
    ],
)
def test_bad_latency_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RankSelectionEnv(**SYNTHETIC, **kwargs)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_kernels_are_timed(dtype):
    shape = AttentionShape(
        get_method("shared_key"),
        (4, 16),
        query_len=32,
        key_len=64,
        head_dim=16,
        n_heads=2,
        n_kv_heads=2,
        causal=False,
        compress_values=True,
        segment_len=32,
    )
    timing = LatencyMeasurer(torch.device("cpu"), warmup=1, repeats=3).time_ranks(shape, dtype).seconds[0]
    assert timing.median > 0 and timing.repeats == 3


def test_shapes_are_equal_by_their_methods_name_and_options():
    same = replace(SHAPE, method=get_method("svd"))  # another object of the same method
    assert same == SHAPE and hash(same) == hash(SHAPE) and same.method is not SHAPE.method
    loki = [replace(SHAPE, method=get_method("loki", loki_keys=f)) for f in (0.25, 0.5)]
    assert loki[0] != loki[1] and loki[0].method_key == ("loki", (("loki_keys", 0.25),))
