"""``drrl inspect``: one document's spectra and minimal ranks, plotted."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from drrl_env.config import SPLITS
from experiments.commands.common import env_args, env_kwargs


def run(args: argparse.Namespace) -> int:
    from drrl_env.env import RankSelectionEnv
    from experiments.inspect_document import inspect

    env = RankSelectionEnv(**{**env_kwargs(args), "split": args.split})
    if not 0 <= args.document < len(env.document_names()):
        raise ValueError(f"--document {args.document} must lie in 0..{len(env.document_names()) - 1}")
    for path in inspect(env, args.document, args.energy, Path(args.out)):
        print(path)
    return 0


def add_parser(sub: Any) -> None:
    """Registers ``drrl inspect`` on the CLI's subparsers."""
    p = sub.add_parser("inspect", help="plot one document's spectra and minimal ranks")
    p.add_argument("--document", type=int, default=0, help="document index in the split")
    p.add_argument("--split", default="test", choices=SPLITS, help="the document's split")
    p.add_argument(
        "--energy", type=float, default=0.9, help="energy fraction whose minimal rank is plotted per layer and segment"
    )
    p.add_argument("--out", default="inspect", help="folder for the plots")
    env_args(p)
    p.set_defaults(func=run)
