"""What every DRRL-v0 rank policy is (``RankPolicy``, SB3's ``predict`` interface), and the one-step
oracle, the base policy of the planner and the teacher of behaviour cloning.  Below ``baselines.py``
and ``planner.py``, which both build on it (so neither imports the other's module in a cycle)."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from drrl_env.env import RankSelectionEnv
from drrl_env.registry import Registry

ROLES = ("deployable", "control", "reference")  # what a baseline's ``role`` may be


class RankPolicy:
    """Base class: subclasses implement :meth:`act`.

    A baseline is a subclass registered with ``@RANK_BASELINES.register``, made from its spec ``NAME`` or
    ``NAME:ARGUMENT`` by ``agents.baselines.make_baseline``.  It declares its family ``name``, the
    ``argument`` it takes after the colon (None: none), its ``role`` (``"deployable"``: observation only;
    ``"reference"``: reads the true attention, an upper reference; ``"control"``: a floor such as random),
    how it is built from a spec (:meth:`from_spec`) and the specs ``drrl compare`` tunes it over on
    training documents (:meth:`tuning_grid`; empty: not tuned)."""

    name = "policy"
    argument: ClassVar[str | None] = None
    role: ClassVar[str] = "deployable"

    @classmethod
    def from_spec(cls, env: gym.Env, arg: str | None, seed: int | None) -> RankPolicy:
        """The policy of spec ``name[:arg]`` for ``env``; a ``ValueError`` says what is wrong with ``arg``."""
        return cls()

    @classmethod
    def tuning_grid(cls, env: gym.Env) -> list[str]:
        """The specs of this family that ``drrl compare`` scores on training documents to keep the best."""
        return []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.role not in ROLES:
            raise TypeError(f"{cls.__qualname__}.role={cls.role!r} is not allowed; choose one of {list(ROLES)}")

    def act(self, obs: dict[str, np.ndarray]) -> int:
        raise NotImplementedError

    def predict(
        self, obs: dict[str, np.ndarray], state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, None]:
        return np.asarray(self.act(obs)), None


RANK_BASELINES: Registry[type[RankPolicy]] = Registry(
    RankPolicy, "baseline", "add a RankPolicy subclass to agents/baselines.py with @RANK_BASELINES.register"
)


@RANK_BASELINES.register
class OraclePolicy(RankPolicy):
    """Takes the safe rank with the best one-step reward on the true attention (an upper
    reference, not deployable: it reads the env's exact outputs, not the observation)."""

    name, role = "oracle", "reference"

    @classmethod
    def from_spec(cls, env: gym.Env, arg: str | None, seed: int | None) -> OraclePolicy:
        return cls(env)

    def __init__(self, env: gym.Env) -> None:
        self.env: RankSelectionEnv = env.unwrapped

    def act(self, obs: dict[str, np.ndarray]) -> int:
        rewards = np.where(obs["action_mask"].astype(bool), self.env.candidate_rewards(), -np.inf)
        return int(np.argmax(rewards))
