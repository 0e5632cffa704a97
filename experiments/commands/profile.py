"""``drrl profile``: the measured latency table of this device, with FLOP ratios."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from drrl_env.attention.methods import method_names
from experiments.commands.common import env_args, env_kwargs, split_list


def run(args: argparse.Namespace) -> int:
    from drrl_env.cache import default_cache_root
    from drrl_env.env import RankSelectionEnv
    from experiments.profile import format_table, plot_speedups, profile_table

    env = RankSelectionEnv(**{**env_kwargs(args), "method": "svd"})  # the shapes only: no calibration needed
    lengths = [int(n) for n in split_list(args.lengths)]
    tables = profile_table(env, split_list(args.methods), lengths, default_cache_root(), args.refresh)
    print(format_table(env, lengths, tables))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for method, table in tables.items():
        print(f"profile of {method}: {table.profile.path}")
    print(f"plot: {plot_speedups(env, lengths, tables, out / 'speedup.png')}")
    return 0


def add_parser(sub: Any) -> None:
    """Registers ``drrl profile`` on the CLI's subparsers."""
    p = sub.add_parser("profile", help="measure and print the latency table of this device, with FLOP ratios")
    p.add_argument("--lengths", default="512,2048,4096,8192", help="key lengths to profile")
    p.add_argument(
        "--methods",
        default=",".join(method_names()),
        help="comma-separated low-rank methods to profile (default: every registered one)",
    )
    p.add_argument("--refresh", action="store_true", help="re-measure instead of reusing the cached profile")
    p.add_argument("--out", default=".", help="folder for speedup.png")
    env_args(p)
    p.set_defaults(func=run)
