"""Baseline policies and the drrl command line."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import SYNTHETIC

from agents.baselines import EnergyThresholdPolicy, make_baseline
from drrl_env.env import RankSelectionEnv
from experiments.cli import main
from experiments.options import parse_env_kwargs, parse_kv_kwargs
from experiments.rollout import evaluate, summary_table
from experiments.trade_off import fixed_rank_terms, trade_off


@pytest.fixture(scope="module")
def env():
    return RankSelectionEnv(**SYNTHETIC)


def test_baselines_act_within_the_mask_and_the_oracle_is_best_per_step(env):
    policies = {
        name: make_baseline(name, env, seed=0) for name in ("full", "fixed:8", "random", "energy:0.9", "oracle")
    }
    obs, _ = env.reset(options={"document": 0})
    done = False
    while not done:
        rewards = env.candidate_rewards()
        mask = obs["action_mask"].astype(bool)
        for name, policy in policies.items():
            action, _ = policy.predict(obs)
            assert 0 <= int(action) < len(env.ranks)
            if name in ("random", "oracle"):
                assert mask[int(action)]
        best = int(policies["oracle"].predict(obs)[0])
        assert rewards[best] == pytest.approx(rewards[mask].max())
        obs, _, done, _, _ = env.step(best)


def test_energy_threshold_picks_the_smallest_rank_that_keeps_tau():
    tail = np.zeros((2, 4, 2), dtype=np.float32)
    tail[:, :, :] = np.sqrt(1 - np.array([0.5, 0.8, 0.95, 1.0]))[None, :, None]  # kept energy per rank
    obs = {"tail_energy": tail}
    assert EnergyThresholdPolicy(0.9).act(obs) == 2
    assert EnergyThresholdPolicy(0.5).act(obs) == 0
    assert EnergyThresholdPolicy(1.0).act(obs) == 3


@pytest.mark.parametrize(
    "spec,message",
    [
        ("fixed:5", "not in the env's rank grid"),
        ("energy:2", "must lie in"),
        ("greedy", "unknown baseline 'greedy'; choose one of .*'energy-cost:TAU'"),
        ("fixed", "needs an argument: fixed:R"),
        ("full:3", "takes no argument"),
    ],
)
def test_bad_baselines_are_rejected(env, spec, message):
    with pytest.raises(ValueError, match=message):
        make_baseline(spec, env)


def test_evaluation_uses_the_same_documents_for_every_policy(env):
    rows = evaluate(env, {"full": make_baseline("full", env), "fixed:8": make_baseline("fixed:8", env)}, range(2))
    assert [r.document for r in rows[:2]] == [r.document for r in rows[2:]]
    full = [r for r in rows if r.policy == "full"]
    assert all(
        r.fidelity == pytest.approx(1.0) and r.cost_ratio == pytest.approx(r.flop_ratio) and r.cost_ratio > 1
        for r in full
    )  # exact attention plus the observation's features
    assert "| fixed:8 | 2 |" in summary_table(rows)


def test_fixed_rank_terms_rebuild_the_env_reward():
    env = RankSelectionEnv(**SYNTHETIC, safety=False)
    terms = fixed_rank_terms(env, documents=2)
    rewards = []
    for rank_index in range(len(env.ranks)):
        per_rank = []
        for doc in range(2):
            env.reset(options={"document": doc})
            done = False
            while not done:
                _, reward, terminated, truncated, _ = env.step(rank_index)
                per_rank.append(reward)
                done = terminated or truncated
        rewards.append(per_rank)
    np.testing.assert_allclose(terms.rewards(), rewards, rtol=1e-6, atol=1e-9)
    assert trade_off(terms, beta=0.0).best_fixed == len(env.ranks) - 1  # nothing to save: full rank
    with pytest.raises(ValueError, match="needs safety=False"):
        fixed_rank_terms(RankSelectionEnv(**SYNTHETIC), documents=1)


def test_env_kwargs_parsing():
    assert parse_env_kwargs(["beta=0.5", "source=synthetic", "ranks=(8, 64)"]) == {
        "beta": 0.5,
        "source": "synthetic",
        "ranks": (8, 64),
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_env_kwargs(["beta"])


def test_kv_env_kwargs_take_kv_fields_and_max_episode_steps():
    # window 64 with block 64 has 62-step episodes at 4096 tokens: the registered 30 must be raisable
    assert parse_kv_kwargs(["window=64", "block=64", "max_episode_steps=62"]) == {
        "window": 64,
        "block": 64,
        "max_episode_steps": 62,
    }
    with pytest.raises(ValueError, match="positive integer"):
        parse_kv_kwargs(["max_episode_steps=0"])
    with pytest.raises(TypeError, match="unknown KVConfig option 'segment_len'"):
        parse_kv_kwargs(["segment_len=64"])


def test_rollout_command_writes_rows(tmp_path):
    out = tmp_path / "rows.json"
    args = ["rollout", "--policies", "full,fixed:16", "--episodes", "2", "--json", str(out), "--env-kwargs"]
    args += [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in SYNTHETIC.items()]
    assert main(args) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 4 and {r["policy"] for r in rows} == {"full", "fixed:16"}


def test_rollout_command_reports_bad_input_in_one_line():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.cli",
            "rollout",
            "--policies",
            "greedy",
            "--env-kwargs",
            "source='synthetic'",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "drrl rollout: error: unknown baseline 'greedy'; choose one of "
        "['full', 'fixed:R', 'static:R0/R1/...', 'energy:TAU', 'energy-cost:TAU', "
        "'budget-greedy:PACE', 'random', 'oracle', 'planner']"
    ]


def test_every_cli_flag_has_help():
    import argparse

    from experiments.cli import build_parser

    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    bare = [
        (name, a.option_strings or a.dest)
        for name, sub in subcommands.items()
        for a in sub._actions
        if not isinstance(a, argparse._HelpAction) and not a.help
    ]
    assert bare == []
