"""Non-learned rank policies with Stable-Baselines3's ``predict`` interface.

``policy.predict(obs) -> (action, None)`` for one observation of ``DRRL-v0`` (layer-level ranks),
so evaluators treat them exactly like trained SB3 models.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from agents.planner import RolloutPlannerPolicy
from agents.policy import OraclePolicy, RankPolicy
from drrl_env.observation import CONTEXT_FIELDS


class FullRankPolicy(RankPolicy):
    """Always exact attention (the last rank index)."""

    name = "full"

    def act(self, obs: dict[str, np.ndarray]) -> int:
        return len(obs["cost"]) - 1


class FixedRankPolicy(RankPolicy):
    """Always the same rank (a value from the env's grid)."""

    def __init__(self, ranks: tuple[int, ...], rank: int) -> None:
        if rank not in ranks:
            raise ValueError(f"fixed rank {rank} is not in the env's rank grid {list(ranks)}")
        self.index = ranks.index(rank)
        self.name = f"fixed:{rank}"

    def act(self, obs: dict[str, np.ndarray]) -> int:
        return self.index


class PerLayerStaticPolicy(RankPolicy):
    """A fixed rank per layer, the same for every segment and document (the static allocation of
    Eigen Attention and Palu); ``ranks_per_layer`` are values from the env's grid.  The layer is read
    from the observation's context (layer / (layers - 1)), so it is deployable."""

    def __init__(self, ranks: tuple[int, ...], ranks_per_layer: list[int]) -> None:
        unknown = [r for r in ranks_per_layer if r not in ranks]
        if unknown or not ranks_per_layer:
            raise ValueError(
                f"per-layer ranks {ranks_per_layer} must be values of the env's rank grid {list(ranks)}, one per layer"
            )
        self.index = [ranks.index(r) for r in ranks_per_layer]
        self.name = "static:" + "/".join(map(str, ranks_per_layer))

    def act(self, obs: dict[str, np.ndarray]) -> int:
        return self.index[round(float(obs["context"][0]) * (len(self.index) - 1))]


class RandomPolicy(RankPolicy):
    """Uniform over the safe ranks of the observation's action mask."""

    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: dict[str, np.ndarray]) -> int:
        return int(self.rng.choice(np.flatnonzero(obs["action_mask"])))


class EnergyThresholdPolicy(RankPolicy):
    """Smallest rank keeping at least ``tau`` of the spectral energy of Q and K, averaged over heads.

    Uses only the observation (deployable): kept energy = 1 - tail_energy^2.
    """

    def __init__(self, tau: float) -> None:
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"energy threshold tau={tau} must lie in (0, 1]")
        self.tau = tau
        self.name = f"energy:{tau:g}"

    def act(self, obs: dict[str, np.ndarray]) -> int:
        kept = 1.0 - obs["tail_energy"].astype(np.float64) ** 2  # (H, R, 2)
        enough = kept.min(-1).mean(0) >= self.tau - 1e-9  # (R,)
        return int(np.argmax(enough)) if enough.any() else len(enough) - 1


class CostAwareEnergyPolicy(EnergyThresholdPolicy):
    """:class:`EnergyThresholdPolicy`, except that it takes full rank where the chosen rank's observed
    cost is not below exact attention's (``obs["cost"] >= 1``): a low rank that saves nothing is
    not worth its error.  Deployable (observation only)."""

    def __init__(self, tau: float) -> None:
        super().__init__(tau)
        self.name = f"energy-cost:{tau:g}"

    def act(self, obs: dict[str, np.ndarray]) -> int:
        rank = super().act(obs)
        return len(obs["cost"]) - 1 if obs["cost"][rank] >= 1.0 else rank


class BudgetGreedyPolicy(RankPolicy):
    """For a ``latency_budget``: fills each step's share of the budget by marginal fidelity per unit
    cost.  Deployable (observation and the configured budget only).

    The step's allowance is the budget left spread evenly over the steps left, times ``pace``:
    ``pace * (budget - cost_used) / (1 - progress)`` in cost-ratio units.  Starting from the
    cheapest allowed rank, it moves to the allowed rank with the largest gain in kept energy
    (1 - tail_energy^2, the lower of Q's and K's, mean over heads) per unit of extra cost, while the
    cost stays within the allowance."""

    def __init__(self, budget: float, pace: float) -> None:
        if not pace > 0:
            raise ValueError(f"pace={pace} must be > 0")
        self.budget, self.pace = budget, pace
        self.name = f"budget-greedy:{pace:g}"

    def act(self, obs: dict[str, np.ndarray]) -> int:
        context = dict(zip(CONTEXT_FIELDS, obs["context"].astype(np.float64)))
        allowance = self.pace * (self.budget - context["cost_used"]) / max(1.0 - context["progress"], 1e-9)
        cost = obs["cost"].astype(np.float64)
        kept = (1.0 - obs["tail_energy"].astype(np.float64) ** 2).min(-1).mean(0)  # (R,)
        allowed = np.flatnonzero(obs["action_mask"])
        rank = int(allowed[np.argmin(cost[allowed])])
        while True:
            better = [r for r in allowed if kept[r] > kept[rank] and cost[rank] < cost[r] <= allowance]
            if not better:
                return rank
            rank = int(max(better, key=lambda r: (kept[r] - kept[rank]) / (cost[r] - cost[rank])))


BASELINES = (
    "full",
    "fixed:R",
    "static:R0/R1/...",
    "random",
    "energy:TAU",
    "energy-cost:TAU",
    "budget-greedy:PACE",
    "oracle",
    "planner",
)
REFERENCES = ("oracle", "planner")  # read the true attention: upper references, not deployable


def make_baseline(spec: str, env: gym.Env, seed: int | None = None) -> RankPolicy:
    """A baseline from its name: ``full``, ``fixed:R``, ``static:R0/R1/...`` (one rank per layer),
    ``random``, ``energy:TAU``, ``energy-cost:TAU``, ``budget-greedy:PACE`` (envs with a
    ``latency_budget``), ``oracle`` (one-step) or ``planner`` (non-myopic rollout, ``agents/planner.py``)."""
    ranks = env.unwrapped.ranks
    name, _, arg = spec.partition(":")
    if env.unwrapped.config.per_head:
        raise ValueError("the baselines choose one rank per layer; make the env with per_head=False")
    try:
        if name == "full" and not arg:
            return FullRankPolicy()
        if name == "fixed" and arg:
            return FixedRankPolicy(ranks, int(arg))
        if name == "static" and arg:
            per_layer = [int(r) for r in arg.split("/")]
            if len(per_layer) != env.unwrapped.source.spec.n_layers:
                raise ValueError(
                    f"give one rank per layer ({env.unwrapped.source.spec.n_layers}), got {len(per_layer)}"
                )
            return PerLayerStaticPolicy(ranks, per_layer)
        if name == "random" and not arg:
            return RandomPolicy(seed)
        if name == "energy" and arg:
            return EnergyThresholdPolicy(float(arg))
        if name == "energy-cost" and arg:
            return CostAwareEnergyPolicy(float(arg))
        if name == "budget-greedy" and arg:
            budget = env.unwrapped.config.latency_budget
            if budget is None:
                raise ValueError("it fills a latency budget; make the env with latency_budget=B")
            return BudgetGreedyPolicy(budget, float(arg))
        if name == "oracle" and not arg:
            return OraclePolicy(env)
        if name == "planner" and not arg:
            return RolloutPlannerPolicy(env)
    except ValueError as err:
        raise ValueError(f"baseline {spec!r}: {err}") from err
    raise ValueError(f"unknown baseline {spec!r}; choose one of {list(BASELINES)}")
