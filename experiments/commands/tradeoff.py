"""``drrl tradeoff``: every fixed rank played, and whether each cost weight poses a trade-off."""

from __future__ import annotations

import argparse
from typing import Any

from drrl_env.config import SPLITS
from experiments.commands.common import env_args, env_kwargs, split_list


def run(args: argparse.Namespace) -> int:
    from drrl_env.env import RankSelectionEnv
    from experiments.trade_off import fixed_rank_terms, format_trade_offs

    env = RankSelectionEnv(**{**env_kwargs(args), "split": args.split, "safety": False})
    betas = [float(b) for b in split_list(args.betas)] if args.betas else [env.config.beta]
    print(format_trade_offs(fixed_rank_terms(env, args.documents), betas))
    return 0


def add_parser(sub: Any) -> None:
    """Registers ``drrl tradeoff`` on the CLI's subparsers."""
    p = sub.add_parser(
        "tradeoff",
        help="play every fixed rank and tell, per cost weight beta, whether the "
        "configuration poses a trade-off (on this device, for measured costs)",
    )
    p.add_argument("--betas", help="comma-separated cost weights to evaluate (default: the env's beta)")
    p.add_argument("--documents", type=int, default=12, help="documents to play (the first N of the split)")
    p.add_argument("--split", default="train", choices=SPLITS, help="documents to play")
    env_args(p)
    p.set_defaults(func=run)
