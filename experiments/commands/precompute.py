"""``drrl precompute``: the on-disk analysis cache of a split filled ahead of a run."""

from __future__ import annotations

import argparse
from typing import Any

from drrl_env.config import SPLITS
from experiments.commands.common import backend_args, env_args
from experiments.options import parse_env_kwargs


def run(args: argparse.Namespace) -> int:
    from experiments.precompute import precompute

    kwargs = {**parse_env_kwargs(args.env_kwargs), "split": args.split}
    count = precompute(
        args.env_id,
        kwargs,
        args.documents,
        backend=args.backend,
        jobs=args.jobs,
        address=args.address,
        report=lambda line: print(line, flush=True),
    )
    print(f"{count} documents of the {args.split} split of {args.env_id} are in the analysis cache")
    return 0


def add_parser(sub: Any) -> None:
    """Registers ``drrl precompute`` on the CLI's subparsers."""
    p = sub.add_parser("precompute", help="fill the on-disk analysis cache of a split ahead of a run")
    p.add_argument("--split", default="train", choices=SPLITS, help="documents to analyse")
    p.add_argument("--documents", type=int, help="the first N documents of the split (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="analysis processes in parallel (local backend)")
    backend_args(p)
    env_args(p)
    p.set_defaults(func=run)
