"""What every DRRL-v0 rank policy is (``RankPolicy``, SB3's ``predict`` interface), and the one-step
oracle, the base policy of the planner and the teacher of behaviour cloning.  Below ``baselines.py``
and ``planner.py``, which both build on it (so neither imports the other's module in a cycle)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from drrl_env.env import RankSelectionEnv


class RankPolicy:
    """Base class: subclasses implement :meth:`act`."""

    name = "policy"

    def act(self, obs: dict[str, np.ndarray]) -> int:
        raise NotImplementedError

    def predict(
        self, obs: dict[str, np.ndarray], state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, None]:
        return np.asarray(self.act(obs)), None


class OraclePolicy(RankPolicy):
    """Takes the safe rank with the best one-step reward on the true attention (an upper
    reference, not deployable: it reads the env's exact outputs, not the observation)."""

    name = "oracle"

    def __init__(self, env: gym.Env) -> None:
        self.env: RankSelectionEnv = env.unwrapped

    def act(self, obs: dict[str, np.ndarray]) -> int:
        rewards = np.where(obs["action_mask"].astype(bool), self.env.candidate_rewards(), -np.inf)
        return int(np.argmax(rewards))
