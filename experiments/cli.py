"""The ``drrl`` command line.

    drrl rollout [--policies random,fixed:8,full,energy:0.9,oracle] [--episodes 4] [--split test]
                 [--env-kwargs key=value ...] [--json FILE]

Bad input exits with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from typing import Any

DEFAULT_POLICIES = "random,fixed:8,fixed:16,full,energy:0.9,oracle"


def parse_env_kwargs(pairs: list[str]) -> dict[str, Any]:
    """``["beta=0.5", "source=synthetic"]`` -> ``{"beta": 0.5, "source": "synthetic"}``."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--env-kwargs entry {pair!r} is not of the form key=value")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def cmd_rollout(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import drrl_env  # noqa: F401
    from agents.baselines import make_baseline
    from experiments.rollout import evaluate, summary_table

    env = gym.make("DRRL-v0", split=args.split, **parse_env_kwargs(args.env_kwargs))
    policies = {name: make_baseline(name, env, seed=args.seed) for name in args.policies.split(",")}
    n_docs = len(env.unwrapped.document_names())
    documents = range(min(args.episodes, n_docs))
    rows = evaluate(env, policies, documents)
    config = env.unwrapped.config
    print(f"DRRL-v0 on {len(documents)} {args.split} documents; reward = {config.alpha} * fidelity "
          f"- {config.beta} * cost - {config.gamma} * perturbation; cost model {config.cost_model!r}")
    print(summary_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in rows], f, indent=2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drrl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rollout = sub.add_parser("rollout", help="run baseline policies on DRRL-v0 and print their reward terms")
    rollout.add_argument("--policies", default=DEFAULT_POLICIES,
                         help="comma-separated baselines: full, fixed:R, random, energy:TAU, oracle")
    rollout.add_argument("--episodes", type=int, default=4, help="documents to run (the first N of the split)")
    rollout.add_argument("--split", default="test", choices=["train", "test", "all"])
    rollout.add_argument("--seed", type=int, default=0)
    rollout.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE")
    rollout.add_argument("--json", help="also write the per-episode rows to this file")
    rollout.set_defaults(func=cmd_rollout)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, KeyError) as err:
        print(f"drrl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
