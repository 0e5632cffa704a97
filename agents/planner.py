"""A non-myopic reference: the rollout algorithm on the true environment (not deployable).

Before a document's first step, :class:`RolloutPlannerPolicy` plans the whole episode on a second
copy of the environment (same configuration; closed loop when the env is), then plays the plan.

Rollout algorithm (Bertsekas' rollout with the one-step oracle as base policy), layer by layer:
for layer l, every candidate, i.e. every rank for all of the layer's segments, is played after the
layers already fixed and completed by the one-step oracle to the episode's end; a candidate is
scored by the episode's whole return, end-of-episode term included.  The best complete episode
seen so far fixes layer l's ranks, and the next layer is planned.  The plan is that best episode,
so it is never worse than the one-step oracle (the first episode played).  Cost: 1 + layers x
ranks episodes per document.

It reads the true attention (``candidate_rewards``) and replays the document many times: a
reference for how much a sequential policy could gain over greedy and static ones, not a policy
a deployed model could run.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np

from agents.policy import RANK_BASELINES, OraclePolicy, RankPolicy
from drrl_env.env import RankSelectionEnv
from drrl_env.play import play


@RANK_BASELINES.register
class RolloutPlannerPolicy(RankPolicy):
    """Plans each document by the rollout algorithm (module docstring), then plays the plan."""

    name, role = "planner", "reference"

    @classmethod
    def from_spec(cls, env: gym.Env, arg: str | None, seed: int | None) -> RolloutPlannerPolicy:
        return cls(env)

    def __init__(self, env: gym.Env) -> None:
        self.env: RankSelectionEnv = env.unwrapped
        if self.env.config.per_head:
            raise ValueError("the planner chooses one rank per layer and segment; make the env with per_head=False")
        self._scratch: RankSelectionEnv | None = None
        self._document: int | None = None
        self._plan: np.ndarray | None = None
        self.episodes_played = 0

    def act(self, obs: dict[str, np.ndarray]) -> int:
        document, layer, segment = self.env.decision
        if (layer, segment) == (0, 0) or document != self._document:
            self._plan, self._document = self.plan(document), document
        return int(self._plan[layer, segment])

    def plan(self, document: int) -> np.ndarray:
        """Rank indices (layers, segments) of the best episode the rollout algorithm finds on ``document``."""
        if self._scratch is None:
            self._scratch = RankSelectionEnv(**dataclasses.asdict(self.env.config))
        n_layers, n_ranks = self._scratch.source.spec.n_layers, len(self._scratch.ranks)
        best_return, best = self._play(document, [])
        for layer in range(n_layers):
            fixed = [best[i] for i in range(layer)]
            for rank in range(n_ranks):
                total, actions = self._play(document, [*fixed, np.full(best.shape[1], rank)])
                if total > best_return:
                    best_return, best = total, actions
        return best

    def _play(self, document: int, rows: list[np.ndarray]) -> tuple[float, np.ndarray]:
        """One episode: layer l's actions from ``rows[l]``, later layers by the one-step oracle.
        Returns its return and the actions taken (layers, segments)."""
        env = self._scratch
        oracle = OraclePolicy(env)
        taken: dict[tuple[int, int], int] = {}

        def act(obs: dict[str, np.ndarray], unwrapped: RankSelectionEnv) -> int:
            _, layer, segment = unwrapped.decision
            taken[layer, segment] = int(rows[layer][segment]) if layer < len(rows) else oracle.act(obs)
            return taken[layer, segment]

        steps = play(env, act, document)
        actions = np.zeros((env.source.spec.n_layers, len(steps) // env.source.spec.n_layers), dtype=np.int64)
        for (layer, segment), action in taken.items():
            actions[layer, segment] = action
        self.episodes_played += 1
        return sum(step.reward for step in steps), actions
