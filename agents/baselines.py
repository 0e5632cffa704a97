"""Non-learned rank policies with Stable-Baselines3's ``predict`` interface.

``policy.predict(obs) -> (action, None)`` for one observation of ``DRRL-v0`` (layer-level ranks),
so evaluators treat them exactly like trained SB3 models.  Every baseline is a ``RankPolicy`` subclass
registered in ``RANK_BASELINES`` (``agents/policy.py``; the oracle there, the planner in ``planner.py``):
a new one is one class here with ``@RANK_BASELINES.register``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

import agents.planner  # noqa: F401  (registers the planner)
from agents.policy import RANK_BASELINES, ROLES, RankPolicy
from drrl_env.observation import CONTEXT_FIELDS

ENERGY_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)  # the thresholds drrl compare tunes the energy families over
PACE_LEVELS = (0.8, 0.9, 1.0, 1.1, 1.25)  # budget-greedy's pacing, tuned when the env has a latency budget


@RANK_BASELINES.register
class FullRankPolicy(RankPolicy):
    """Always exact attention (the last rank index)."""

    name = "full"

    def act(self, obs: dict[str, np.ndarray]) -> int:
        return len(obs["cost"]) - 1


@RANK_BASELINES.register
class FixedRankPolicy(RankPolicy):
    """Always the same rank (a value from the env's grid)."""

    name, argument = "fixed", "R"

    @classmethod
    def from_spec(cls, env: gym.Env, arg: str | None, seed: int | None) -> FixedRankPolicy:
        return cls(env.unwrapped.ranks, int(arg))

    @classmethod
    def tuning_grid(cls, env: gym.Env) -> list[str]:
        return [f"fixed:{r}" for r in env.unwrapped.ranks]

    def __init__(self, ranks: tuple[int, ...], rank: int) -> None:
        if rank not in ranks:
            raise ValueError(f"fixed rank {rank} is not in the env's rank grid {list(ranks)}")
        self.index = ranks.index(rank)
        self.name = f"fixed:{rank}"

    def act(self, obs: dict[str, np.ndarray]) -> int:
        return self.index


@RANK_BASELINES.register
class PerLayerStaticPolicy(RankPolicy):
    """A fixed rank per layer, the same for every segment and document (the static allocation of
    Eigen Attention and Palu); ``ranks_per_layer`` are values from the env's grid.  The layer is read
    from the observation's context (layer / (layers - 1)), so it is deployable.  ``drrl compare``
    searches it by coordinate ascent from the best fixed rank (``experiments/compare.tune_baselines``)."""

    name, argument = "static", "R0/R1/..."

    @classmethod
    def from_spec(cls, env: gym.Env, arg: str | None, seed: int | None) -> PerLayerStaticPolicy:
        per_layer = [int(r) for r in arg.split("/")]
        n_layers = env.unwrapped.source.spec.n_layers
        if len(per_layer) != n_layers:
            raise ValueError(f"give one rank per layer ({n_layers}), got {len(per_layer)}")
        return cls(env.unwrapped.ranks, per_layer)

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


@RANK_BASELINES.register
class RandomPolicy(RankPolicy):
    """Uniform over the safe ranks of the observation's action mask."""

    name, role = "random", "control"

    @classmethod
    def from_spec(cls, env: gym.Env, arg: str | None, seed: int | None) -> RandomPolicy:
        return cls(seed)

    def __init__(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: dict[str, np.ndarray]) -> int:
        return int(self.rng.choice(np.flatnonzero(obs["action_mask"])))


@RANK_BASELINES.register
class EnergyThresholdPolicy(RankPolicy):
    """Smallest rank keeping at least ``tau`` of the spectral energy of Q and K, averaged over heads.

    Uses only the observation (deployable): kept energy = 1 - tail_energy^2.
    """

    name, argument = "energy", "TAU"

    @classmethod
    def from_spec(cls, env: gym.Env, arg: str | None, seed: int | None) -> EnergyThresholdPolicy:
        return cls(float(arg))

    @classmethod
    def tuning_grid(cls, env: gym.Env) -> list[str]:
        return [f"{cls.name}:{tau}" for tau in ENERGY_LEVELS]

    def __init__(self, tau: float) -> None:
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"energy threshold tau={tau} must lie in (0, 1]")
        self.tau = tau
        self.name = f"energy:{tau:g}"

    def act(self, obs: dict[str, np.ndarray]) -> int:
        kept = 1.0 - obs["tail_energy"].astype(np.float64) ** 2  # (H, R, 2)
        enough = kept.min(-1).mean(0) >= self.tau - 1e-9  # (R,)
        return int(np.argmax(enough)) if enough.any() else len(enough) - 1


@RANK_BASELINES.register
class CostAwareEnergyPolicy(EnergyThresholdPolicy):
    """:class:`EnergyThresholdPolicy`, except that it takes full rank where the chosen rank's observed
    cost is not below exact attention's (``obs["cost"] >= 1``): a low rank that saves nothing is
    not worth its error.  Deployable (observation only)."""

    name = "energy-cost"

    def __init__(self, tau: float) -> None:
        super().__init__(tau)
        self.name = f"energy-cost:{tau:g}"

    def act(self, obs: dict[str, np.ndarray]) -> int:
        rank = super().act(obs)
        return len(obs["cost"]) - 1 if obs["cost"][rank] >= 1.0 else rank


@RANK_BASELINES.register
class BudgetGreedyPolicy(RankPolicy):
    """For a ``latency_budget``: fills each step's share of the budget by marginal fidelity per unit
    cost.  Deployable (observation and the configured budget only).

    The step's allowance is the budget left spread evenly over the steps left, times ``pace``:
    ``pace * (budget - cost_used) / (1 - progress)`` in cost-ratio units.  Starting from the
    cheapest allowed rank, it moves to the allowed rank with the largest gain in kept energy
    (1 - tail_energy^2, the lower of Q's and K's, mean over heads) per unit of extra cost, while the
    cost stays within the allowance."""

    name, argument = "budget-greedy", "PACE"

    @classmethod
    def from_spec(cls, env: gym.Env, arg: str | None, seed: int | None) -> BudgetGreedyPolicy:
        budget = env.unwrapped.config.latency_budget
        if budget is None:
            raise ValueError("it fills a latency budget; make the env with latency_budget=B")
        return cls(budget, float(arg))

    @classmethod
    def tuning_grid(cls, env: gym.Env) -> list[str]:
        return [f"budget-greedy:{p}" for p in PACE_LEVELS] if env.unwrapped.config.latency_budget is not None else []

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


def baseline_names() -> list[str]:
    """Every registered baseline as a spec pattern (``full``, ``fixed:R``, ``energy:TAU``, ...): the deployable
    ones first, then the controls, then the references."""
    classes = sorted(map(RANK_BASELINES.get, RANK_BASELINES.names()), key=lambda c: ROLES.index(c.role))
    return [cls.name if cls.argument is None else f"{cls.name}:{cls.argument}" for cls in classes]


def role_of(spec: str) -> str:
    """The ``role`` of baseline ``spec``'s family (``"deployable"``, ``"reference"`` or ``"control"``)."""
    return RANK_BASELINES.get(spec.partition(":")[0]).role


def make_baseline(spec: str, env: gym.Env, seed: int | None = None) -> RankPolicy:
    """A baseline from its spec ``NAME`` or ``NAME:ARGUMENT`` (:func:`baseline_names`): ``full``, ``fixed:R``,
    ``static:R0/R1/...`` (one rank per layer), ``random``, ``energy:TAU``, ``energy-cost:TAU``,
    ``budget-greedy:PACE`` (envs with a ``latency_budget``), ``oracle`` (one-step) or ``planner``
    (non-myopic rollout, ``agents/planner.py``); ``seed`` seeds the random one."""
    if env.unwrapped.config.per_head:
        raise ValueError("the baselines choose one rank per layer; make the env with per_head=False")
    name, colon, arg = spec.partition(":")
    if name not in RANK_BASELINES.names():
        raise ValueError(f"unknown baseline {spec!r}; choose one of {baseline_names()}")
    cls = RANK_BASELINES.get(name)
    if (cls.argument is None) == bool(colon):
        needs = "takes no argument" if cls.argument is None else f"needs an argument: {name}:{cls.argument}"
        raise ValueError(f"baseline {spec!r} {needs}")
    try:
        return cls.from_spec(env, arg or None, seed)
    except ValueError as err:
        raise ValueError(f"baseline {spec!r}: {err}") from err
