"""The one episode loop: play a policy through any drrl environment and keep what each step gave.

Every consumer that runs whole episodes (evaluation rows, the planner's rollouts, behaviour
cloning's dataset, the fixed-rank trade-off table, the KV frontier) calls :func:`play`, so an episode
means the same thing everywhere: ``reset(options)``, then ``step(act(obs, env))`` until terminated
or truncated.  ``act`` receives the unwrapped environment too, for references that read the true
state (oracles); deployable policies use the observation alone.  :func:`lookahead` tries actions from
the current state and returns to it, for environments with ``snapshot``/``restore`` (DRRL-KV-v0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

# (observation, unwrapped env) -> action
Act = Callable[[dict[str, np.ndarray], Any], Any]


@dataclass(frozen=True)
class Step:
    """One step: the observation acted on, the action, the reward and the step's info."""

    observation: dict[str, np.ndarray]
    action: Any
    reward: float
    info: dict[str, Any]


def choose_document(options: dict[str, Any] | None, n_documents: int, rng: np.random.Generator) -> int:
    """The document of a ``reset``: ``options["document"]`` (checked), else one drawn with the env's ``rng``."""
    index = (options or {}).get("document")
    if index is None:
        return int(rng.integers(n_documents))
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n_documents:
        raise ValueError(f"options['document']={index!r} must be an integer in 0..{n_documents - 1}")
    return int(index)


def play(
    env: gym.Env, act: Act, document: int, options: dict[str, Any] | None = None, keep_observations: bool = False
) -> list[Step]:
    """One episode on ``document`` (``options`` adds reset options); observations are kept only when asked
    (a long episode's observations are large)."""
    obs, _ = env.reset(options={**(options or {}), "document": int(document)})
    steps, done = [], False
    while not done:
        action = act(obs, env.unwrapped)
        next_obs, reward, terminated, truncated, info = env.step(action)
        steps.append(Step(obs if keep_observations else {}, action, float(reward), info))
        obs, done = next_obs, terminated or truncated
    return steps


def lookahead(env: gym.Env, actions: list[Any]) -> list[Step]:
    """Steps ``actions`` from the current state, stopping early if the episode ends, then restores that
    state: what those actions would give, with the episode left as it was (privileged: a reference that
    sees what its decisions do to later tokens)."""
    unwrapped = env.unwrapped
    if not hasattr(unwrapped, "snapshot"):
        raise TypeError(f"{type(unwrapped).__name__} has no snapshot()/restore(): lookahead needs both")
    state, steps = unwrapped.snapshot(), []
    try:
        for action in actions:
            _, reward, terminated, truncated, info = unwrapped.step(action)
            steps.append(Step({}, action, float(reward), info))
            if terminated or truncated:
                break
    finally:
        unwrapped.restore(state)
    return steps


def predicting(policy: Any) -> Act:
    """An ``Act`` from an object with SB3's ``predict`` (trained agents and baselines): deterministic, the
    recurrent state carried across the episode's steps, masks passed where the policy takes them."""
    from sb3_contrib import MaskablePPO

    state: dict[str, Any] = {"hidden": None, "start": True}

    def act(obs: dict[str, np.ndarray], env: Any) -> Any:
        extra = {"action_masks": env.action_masks()} if isinstance(policy, MaskablePPO) else {}
        action, state["hidden"] = policy.predict(
            obs, state=state["hidden"], episode_start=np.array([state["start"]]), deterministic=True, **extra
        )
        state["start"] = False
        return action

    return act
