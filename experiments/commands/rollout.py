"""``drrl rollout``: baseline policies played on documents, their reward terms printed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agents.baselines import baseline_names
from drrl_env.config import SPLITS
from experiments.commands.common import DEFAULT_POLICIES, env_args, split_list
from experiments.options import parse_env_kwargs


def run(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import drrl_env  # noqa: F401
    from agents.baselines import make_baseline
    from experiments.rollout import evaluate, summary_table

    env = gym.make(args.env_id, **{**parse_env_kwargs(args.env_kwargs), "split": args.split})
    policies = {name: make_baseline(name, env, seed=args.seed) for name in split_list(args.policies)}
    documents = range(min(args.episodes, len(env.unwrapped.document_names())))
    rows = evaluate(env, policies, documents)
    config = env.unwrapped.config
    print(
        f"{args.env_id} on {len(documents)} {args.split} documents; reward = {config.alpha} * fidelity "
        f"- {config.beta} * cost - {config.gamma} * perturbation; cost model {config.cost_model!r}"
    )
    print(summary_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in rows], indent=1))
    return 0


def add_parser(sub: Any) -> None:
    """Registers ``drrl rollout`` on the CLI's subparsers."""
    p = sub.add_parser("rollout", help="run baseline policies and print their reward terms")
    p.add_argument("--policies", default=DEFAULT_POLICIES, help=f"comma-separated, of: {', '.join(baseline_names())}")
    p.add_argument("--episodes", type=int, default=4, help="documents to run (the first N of the split)")
    p.add_argument("--split", default="test", choices=SPLITS, help="documents to run on")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument("--json", help="also write the per-episode rows to this file")
    env_args(p)
    p.set_defaults(func=run)
