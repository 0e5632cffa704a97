"""``drrl tradeoff``: does a configuration pose a real trade-off, and for which cost weights?

Every rank of the grid is played as a fixed policy (all heads alike, safety off) on the first
documents of the env's split; each step's fidelity and perturbation terms and its cost ratio are
recorded.  Because the reward is ``alpha * fidelity - beta * cost - gamma * perturbation``, one
set of rollouts answers for a whole sweep of ``beta``:

- the best fixed rank (highest mean reward): a trade-off needs it strictly inside the grid;
- the one-step-best rank of every step and how often each rank is it: a trade-off worth an
  agent needs more than one of them, varying across layers and segments.

Under ``cost_model="profile"`` the costs are this device's measured latencies, so the answer is
the device's: run it on the machine that will train.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from drrl_env.env import RankSelectionEnv
from drrl_env.reward import RewardWeights


@dataclass(frozen=True)
class FixedRankTerms:
    """Fixed-rank rollouts: the reward's fidelity, cost ratio and perturbation bound of every step,
    each (R, steps); ``layers`` (steps,); ``weights`` the env's reward weights."""

    ranks: tuple[int, ...]
    fidelity: np.ndarray
    cost: np.ndarray
    perturbation: np.ndarray
    layers: np.ndarray
    weights: RewardWeights

    def rewards(self, beta: float | None = None) -> np.ndarray:
        """(R, steps) rewards with cost weight ``beta`` (the env's when None)."""
        weights = self.weights if beta is None else replace(self.weights, beta=beta)
        return weights.total(self.fidelity, self.cost, self.perturbation)


@dataclass(frozen=True)
class TradeOff:
    """What fixed-rank rollouts say about one cost weight."""

    mean_reward: np.ndarray  # (R,)
    best_fixed: int  # index into ranks
    one_step_best_counts: np.ndarray  # (R,) steps on which each rank earns the most
    layer_modes: dict[int, int]  # layer -> its most frequent one-step-best rank index

    @property
    def poses_trade_off(self) -> bool:
        """Best fixed rank strictly inside the grid, and the one-step-best rank varies with the layer."""
        return 0 < self.best_fixed < len(self.mean_reward) - 1 and len(set(self.layer_modes.values())) >= 2


def fixed_rank_terms(env: RankSelectionEnv, documents: int) -> FixedRankTerms:
    """Plays every rank as a fixed policy on documents 0..documents-1 of ``env``'s split."""
    if env.config.safety:
        raise ValueError("fixed_rank_terms needs safety=False: the mask would replace the fixed ranks")
    if not 1 <= documents <= len(env.document_names()):
        raise ValueError(f"documents={documents} must lie in 1..{len(env.document_names())}")
    fields = ("reward_fidelity", "cost_ratio", "perturbation_bound")  # the reward's inputs, as info gives them
    terms: dict[str, list[list[float]]] = {name: [] for name in fields}
    layers: list[int] = []
    for rank_index in range(len(env.ranks)):
        per_rank: dict[str, list[float]] = {name: [] for name in fields}
        layers = []
        for doc in range(documents):
            env.reset(options={"document": doc})
            done = False
            while not done:
                _, _, terminated, truncated, info = env.step(rank_index)
                done = terminated or truncated
                for name in fields:
                    per_rank[name].append(info[name])
                layers.append(info["layer"])
        for name in fields:
            terms[name].append(per_rank[name])
    return FixedRankTerms(env.ranks, *(np.asarray(terms[name]) for name in fields), np.asarray(layers), env.weights)


def trade_off(terms: FixedRankTerms, beta: float | None = None) -> TradeOff:
    rewards = terms.rewards(beta)  # (R, steps)
    best_step = rewards.argmax(0)  # (steps,)
    counts = np.bincount(best_step, minlength=len(terms.ranks))
    modes = {int(layer): int(np.bincount(best_step[terms.layers == layer], minlength=len(terms.ranks)).argmax())
             for layer in np.unique(terms.layers)}
    mean = rewards.mean(1)
    return TradeOff(mean, int(mean.argmax()), counts, modes)


def format_trade_offs(terms: FixedRankTerms, betas: list[float]) -> str:
    """One line per beta: best fixed rank, one-step-best rank counts, per-layer modes, verdict."""
    ranks = terms.ranks
    lines = [f"ranks {list(ranks)}; {terms.fidelity.shape[1]} steps per rank",
             f"mean fidelity term (alpha * fidelity): {np.round(terms.weights.alpha * terms.fidelity.mean(1), 3).tolist()}",
             f"mean cost ratio to exact attention:    {np.round(terms.cost.mean(1), 3).tolist()}"]
    for beta in betas:
        result = trade_off(terms, beta)
        modes = sorted({ranks[i] for i in result.layer_modes.values()})
        lines.append(f"beta {beta:g}: best fixed rank {ranks[result.best_fixed]}, one-step-best counts "
                     f"{result.one_step_best_counts.tolist()}, per-layer modes {modes} -> "
                     f"{'trade-off' if result.poses_trade_off else 'no trade-off'}")
    return "\n".join(lines)
