"""The committed comparison's baseline rows are reproduced by the current env (behaviour pinned across refactors)."""

import json
from pathlib import Path

import numpy as np
import pytest

from agents.baselines import make_baseline
from experiments.rollout import run_episode

ROWS = Path(__file__).parent.parent / "experiments" / "results" / "compare_default" / "rows.json"
# the first version's MDP, which made those rows: open loop, bounds relative to the exact output, its thresholds
LEGACY = {"closed_loop": False, "privileged_observation": True, "epsilon": 300.0, "epsilon_min": 150.0,
          "epsilon_max": 600.0}
POLICIES = ("full", "fixed:8", "energy:0.8", "oracle")
DOCUMENTS = (0, 9, 17)
FIELDS = ("reward", "fidelity_term", "cost_term", "perturbation_term", "fidelity", "relative_error", "cost_ratio",
          "flop_ratio", "mean_rank", "replaced_fraction")


@pytest.mark.parametrize("policy", POLICIES)
def test_default_env_reproduces_compare_default_rows(policy):
    import gymnasium as gym

    import drrl_env  # noqa: F401

    saved = {(r["policy"], r["document_index"]): r for r in json.loads(ROWS.read_text())}
    env = gym.make("DRRL-v0", split="test", **LEGACY)
    agent = make_baseline(policy, env, seed=0)
    for document in DOCUMENTS:
        row = run_episode(env, agent, policy, document).as_dict()
        expected = saved[(policy, document)]
        assert row["document"] == expected["document"]
        for name in FIELDS:
            assert row[name] == pytest.approx(expected[name], abs=1e-6), (policy, document, name)
        np.testing.assert_allclose(row["ranks"], expected["ranks"], atol=1e-6)
