"""Agents for DRRL-v0, all with SB3's ``predict()``: non-learned baselines (``baselines.py``), the
Stable-Baselines3 / sb3-contrib agents (``sb3_agents.py``) and the Transformer features extractor
(``transformer_policy.py``)."""

from agents.baselines import (
    EnergyThresholdPolicy,
    FixedRankPolicy,
    FullRankPolicy,
    RandomPolicy,
    baseline_names,
    make_baseline,
)
from agents.policy import RANK_BASELINES, OraclePolicy

__all__ = [
    "RANK_BASELINES",
    "baseline_names",
    "EnergyThresholdPolicy",
    "FixedRankPolicy",
    "FullRankPolicy",
    "OraclePolicy",
    "RandomPolicy",
    "make_baseline",
]
