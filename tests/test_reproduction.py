"""The committed comparison's baseline rows are reproduced by the current env (behaviour pinned across refactors)."""

import json
from pathlib import Path

import numpy as np
import pytest

from agents.baselines import make_baseline
from experiments.rollout import run_episode

ROWS = Path(__file__).parent.parent / "experiments" / "results" / "compare_default" / "rows.json"
# the first version's MDP, which made those rows: open loop, bounds relative to the exact output, attention-only
# cost, its thresholds
LEGACY = {
    "closed_loop": False,
    "privileged_observation": True,
    "feature_cost": False,
    "epsilon": 300.0,
    "epsilon_min": 150.0,
    "epsilon_max": 600.0,
}
POLICIES = ("full", "fixed:8", "energy:0.8", "oracle")
DOCUMENTS = ("attribute-access#0", "binary#0", "formatstrings#3")  # test documents of the first version's split
FIELDS = (
    "reward",
    "fidelity_term",
    "cost_term",
    "perturbation_term",
    "fidelity",
    "relative_error",
    "cost_ratio",
    "flop_ratio",
    "mean_rank",
    "replaced_fraction",
)


def _first_version_text(name: str) -> str:
    """A pydoc document as the first version cut it (before duplicate topics and shared paragraphs left the splits)."""
    from pydoc_data.topics import topics

    from drrl_env.sources.corpus import _cut

    topic, _, _ = name.partition("#")
    return next(d.text for d in _cut(topic, topics[topic]) if d.name == name)


@pytest.mark.parametrize("policy", POLICIES)
def test_default_env_reproduces_compare_default_rows(policy):
    import gymnasium as gym

    import drrl_env  # noqa: F401

    saved = {(r["policy"], r["document"]): r for r in json.loads(ROWS.read_text())}
    env = gym.make("DRRL-v0", corpus=[_first_version_text(name) for name in DOCUMENTS], split="all", **LEGACY)
    agent = make_baseline(policy, env, seed=0)
    for index, document in enumerate(DOCUMENTS):
        row = run_episode(env, agent, policy, index).as_dict()
        expected = saved[(policy, document)]
        for name in FIELDS:
            assert row[name] == pytest.approx(expected[name], abs=1e-6), (policy, document, name)
        np.testing.assert_allclose(row["ranks"], expected["ranks"], atol=1e-6)
