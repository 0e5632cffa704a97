"""Run policies on DRRL-v0 episodes and summarise what they did, one row per episode."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class EpisodeSummary:
    """Means over one episode's steps (reward and its terms are sums)."""

    policy: str
    document: str
    steps: int
    reward: float
    fidelity_term: float
    cost_term: float
    perturbation_term: float
    fidelity: float
    relative_error: float
    cost_ratio: float
    flop_ratio: float
    mean_rank: float
    replaced_fraction: float

    def as_dict(self) -> dict:
        return asdict(self)


def run_episode(env: gym.Env, policy, name: str, document: int) -> EpisodeSummary:
    """One episode on document ``document`` with ``policy.predict`` (SB3 interface)."""
    obs, info = env.reset(options={"document": document})
    infos, rewards = [], []
    done = False
    while not done:
        action, _ = policy.predict(obs, deterministic=True)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        infos.append(info)
        done = terminated or truncated

    def mean(key: str) -> float:
        return float(np.mean([np.mean(i[key]) for i in infos]))

    def total(term: str) -> float:
        return float(sum(i["reward_terms"][term] for i in infos))

    return EpisodeSummary(
        policy=name, document=infos[0]["document"], steps=len(infos), reward=float(sum(rewards)),
        fidelity_term=total("fidelity"), cost_term=total("cost"), perturbation_term=total("perturbation"),
        fidelity=mean("fidelity"), relative_error=mean("relative_error"), cost_ratio=mean("cost_ratio"),
        flop_ratio=mean("flop_ratio"), mean_rank=mean("rank"), replaced_fraction=mean("action_replaced"))


def evaluate(env: gym.Env, policies: dict[str, object], documents: Iterable[int]) -> list[EpisodeSummary]:
    """Every policy on every document (the same documents for all)."""
    documents = list(documents)
    return [run_episode(env, policy, name, doc) for name, policy in policies.items() for doc in documents]


def summary_table(rows: list[EpisodeSummary]) -> str:
    """Mean per policy of the per-episode figures, as a Markdown table."""
    columns = ("reward", "fidelity", "relative_error", "cost_ratio", "flop_ratio", "mean_rank", "replaced_fraction")
    lines = ["| policy | episodes | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for name in dict.fromkeys(r.policy for r in rows):
        mine = [r for r in rows if r.policy == name]
        values = [np.mean([getattr(r, c) for r in mine]) for c in columns]
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)
