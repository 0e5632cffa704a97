"""Agents for DRRL-v0, all with SB3's ``predict()``: non-learned baselines (``baselines.py``), the
Stable-Baselines3 / sb3-contrib agents (``sb3_agents.py``) and the Transformer features extractor
(``transformer_policy.py``)."""

from agents.baselines import (
    BASELINES,
    EnergyThresholdPolicy,
    FixedRankPolicy,
    FullRankPolicy,
    OraclePolicy,
    RandomPolicy,
    make_baseline,
)

__all__ = [
    "BASELINES",
    "EnergyThresholdPolicy",
    "FixedRankPolicy",
    "FullRankPolicy",
    "OraclePolicy",
    "RandomPolicy",
    "make_baseline",
]
