"""``drrl tradeoff``: does a configuration pose a real trade-off, and for which cost weights?

Every rank of the grid is played as a fixed policy (all heads alike, safety off) on the first
documents of the env's split; each step's fidelity and perturbation terms and its cost ratio are
recorded, and the end-of-episode term on each episode's last step.  Because the reward is
``alpha * fidelity - beta * cost - gamma * perturbation`` (+ the end term), one set of rollouts
answers for a whole sweep of ``beta``.  In closed loop a step's terms depend on the ranks before
it, so a fixed rank's steps are those of its own trajectory:

- the best fixed rank (highest mean reward) and the one-step oracle's headroom over it: the mean
  over steps of the best rank's reward, (oracle - best fixed) / |best fixed|;
- the one-step-best rank of every step and how often each rank is it.

A configuration poses a trade-off when at least ``MIN_BEST_RANKS`` ranks are each the one-step best
on at least ``MIN_SHARE`` of the steps and the oracle's headroom is at least ``MIN_HEADROOM``:
then no fixed rank is close to optimal, and an agent that reads the step has something to win.

Under ``cost_model="profile"`` the costs are this device's measured latencies, so the answer is
the device's: run it on the machine that will train.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from drrl_env.env import RankSelectionEnv
from drrl_env.play import play
from drrl_env.reward import RewardWeights

MIN_BEST_RANKS = 3  # ranks that must each be the one-step best somewhere ...
MIN_SHARE = 0.01  # ... on at least this share of the steps (a rank best on a handful of steps is noise)
MIN_HEADROOM = 0.05  # one-step oracle over the best fixed rank, relative


@dataclass(frozen=True)
class FixedRankTerms:
    """Fixed-rank rollouts: the reward's fidelity, cost ratio and perturbation bound of every step,
    and the end-of-episode term (0 but on the last steps), each (R, steps); ``layers`` (steps,);
    ``weights`` the env's reward weights."""

    ranks: tuple[int, ...]
    fidelity: np.ndarray
    cost: np.ndarray
    perturbation: np.ndarray
    end: np.ndarray
    layers: np.ndarray
    weights: RewardWeights

    def rewards(self, beta: float | None = None) -> np.ndarray:
        """(R, steps) rewards with cost weight ``beta`` (the env's when None)."""
        weights = self.weights if beta is None else replace(self.weights, beta=beta)
        return weights.total(self.fidelity, self.cost, self.perturbation) + self.end


@dataclass(frozen=True)
class TradeOff:
    """What fixed-rank rollouts say about one cost weight."""

    mean_reward: np.ndarray  # (R,)
    best_fixed: int  # index into ranks
    oracle_reward: float  # mean over steps of the best rank's reward
    one_step_best_counts: np.ndarray  # (R,) steps on which each rank earns the most
    layer_modes: dict[int, int]  # layer -> its most frequent one-step-best rank index

    @property
    def headroom(self) -> float:
        """(oracle - best fixed) / |best fixed| mean reward."""
        best = self.mean_reward[self.best_fixed]
        return float((self.oracle_reward - best) / max(abs(best), 1e-12))

    @property
    def poses_trade_off(self) -> bool:
        """At least MIN_BEST_RANKS ranks are the one-step best on MIN_SHARE of the steps, and the headroom is
        MIN_HEADROOM."""
        shares = self.one_step_best_counts / self.one_step_best_counts.sum()
        return int((shares >= MIN_SHARE).sum()) >= MIN_BEST_RANKS and self.headroom >= MIN_HEADROOM


def fixed_rank_terms(env: RankSelectionEnv, documents: int) -> FixedRankTerms:
    """Plays every rank as a fixed policy on documents 0..documents-1 of ``env``'s split."""
    if env.config.safety:
        raise ValueError("fixed_rank_terms needs safety=False: the mask would replace the fixed ranks")
    if not 1 <= documents <= len(env.document_names()):
        raise ValueError(f"documents={documents} must lie in 1..{len(env.document_names())}")
    fields = ("reward_fidelity", "cost_ratio", "perturbation_bound", "end")  # the reward's inputs
    terms: dict[str, list[list[float]]] = {name: [] for name in fields}
    layers: list[int] = []
    for rank_index in range(len(env.ranks)):
        per_rank: dict[str, list[float]] = {name: [] for name in fields}
        layers = []
        for doc in range(documents):
            for step in play(env, lambda obs, _, index=rank_index: index, doc):
                info = step.info
                info["end"] = info["reward_terms"].get("end_fidelity", 0.0)
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
    modes = {
        int(layer): int(np.bincount(best_step[terms.layers == layer], minlength=len(terms.ranks)).argmax())
        for layer in np.unique(terms.layers)
    }
    mean = rewards.mean(1)
    return TradeOff(mean, int(mean.argmax()), float(rewards.max(0).mean()), counts, modes)


def format_trade_offs(terms: FixedRankTerms, betas: list[float]) -> str:
    """One line per beta: best fixed rank, one-step-best rank counts, per-layer modes, verdict."""
    ranks = terms.ranks
    lines = [
        f"ranks {list(ranks)}; {terms.fidelity.shape[1]} steps per rank",
        f"mean fidelity term (alpha * fidelity): {np.round(terms.weights.alpha * terms.fidelity.mean(1), 3).tolist()}",
        f"mean cost ratio to exact attention:    {np.round(terms.cost.mean(1), 3).tolist()}",
    ]
    for beta in betas:
        result = trade_off(terms, beta)
        modes = sorted({ranks[i] for i in result.layer_modes.values()})
        lines.append(
            f"beta {beta:g}: best fixed rank {ranks[result.best_fixed]}, oracle headroom "
            f"{result.headroom:+.1%}, one-step-best counts {result.one_step_best_counts.tolist()}, "
            f"per-layer modes {modes} -> {'trade-off' if result.poses_trade_off else 'no trade-off'}"
        )
    return "\n".join(lines)
