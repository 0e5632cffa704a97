"""Seeded fuzz: random synthetic configurations and random (masked or not) play, about 20,000 steps."""

import numpy as np
from test_env import _documented_info_keys

from drrl_env.env import RankSelectionEnv

STEPS = 20_000


def _random_config(rng: np.random.Generator) -> dict:
    head_dim = int(rng.choice([8, 16, 32]))
    kv_heads = int(rng.choice([1, 2]))
    segment_len = int(rng.choice([16, 32, 48]))
    ranks = sorted(set(rng.integers(1, head_dim, size=int(rng.integers(1, 5))).tolist()) | {head_dim})
    return {
        "source": "synthetic",
        "synthetic_layers": int(rng.integers(1, 4)),
        "synthetic_heads": kv_heads * int(rng.integers(1, 3)),
        "synthetic_kv_heads": kv_heads,
        "synthetic_head_dim": head_dim,
        "synthetic_seq_len": int(rng.integers(segment_len, 4 * segment_len)),
        "synthetic_documents": 4,
        "synthetic_decay": float(rng.uniform(0, 2)),
        "synthetic_causal": bool(rng.integers(2)),
        "synthetic_seed": int(rng.integers(1000)),
        "segment_len": segment_len,
        "ranks": tuple(r for r in ranks if r <= segment_len or r == head_dim),
        "per_head": bool(rng.integers(2)),
        "method": str(rng.choice(["svd", "shared_key"])),
        "compress_values": bool(rng.integers(2)),
        "safety": bool(rng.integers(2)),
        "fidelity_metric": str(rng.choice(["cosine", "one_minus_error"])),
        "beta": float(rng.uniform(0, 3)),
        "gamma": float(rng.uniform(0, 1)),
        "bound_clip": float(rng.uniform(1, 1e4)),
        "target_seq_len": None if rng.integers(2) else int(rng.integers(64, 8192)),
        "split": "all",
        "cache_dir": None,
    }


def test_random_configurations_and_play_keep_every_promise():
    rng = np.random.default_rng(2026)
    keys = _documented_info_keys() - {"end_fidelity", "end_perplexity", "exact_perplexity"}
    steps = configs = 0
    while steps < STEPS:
        env = RankSelectionEnv(**_random_config(rng))
        configs += 1
        for _ in range(int(rng.integers(20, 60))):
            obs, info = env.reset(seed=int(rng.integers(1 << 30)))
            done = False
            while not done:
                assert env.observation_space.contains(obs), (env.config, {k: v for k, v in obs.items()})
                if rng.random() < 0.5:  # masked play, as MaskablePPO would
                    mask = info["action_mask"].reshape(-1, len(env.ranks)).astype(bool)
                    action = [int(rng.choice(np.flatnonzero(row))) for row in mask]
                    action = action if env.config.per_head else action[0]
                else:
                    action = env.action_space.sample()
                obs, reward, terminated, truncated, info = env.step(action)
                assert np.isfinite(reward) and set(info) == keys
                assert abs(reward - sum(info["reward_terms"].values())) < 1e-9
                steps += 1
                done = terminated or truncated
    assert configs >= 5
