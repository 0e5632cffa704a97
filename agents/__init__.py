"""Agents for DRRL-v0: non-learned baselines (and, later, SB3 agents and the Transformer policy)."""

from agents.baselines import (BASELINES, EnergyThresholdPolicy, FixedRankPolicy, FullRankPolicy, OraclePolicy,
                              RandomPolicy, make_baseline)

__all__ = ["BASELINES", "EnergyThresholdPolicy", "FixedRankPolicy", "FullRankPolicy", "OraclePolicy",
           "RandomPolicy", "make_baseline"]
