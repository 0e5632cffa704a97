"""The ``drrl`` command line.

    drrl rollout   [--policies random,fixed:8,full,...] [--episodes 4] [--split test] [--env-kwargs k=v ...]
    drrl train     --algo ppo --policy transformer --timesteps N --seed S [--config FILE.yaml]
                   [--env-kwargs k=v ...] [--logdir runs/] [--pretrain-bc N] [--n-envs K] [--resume RUN]
    drrl evaluate  (--model RUN | --baseline full|fixed:R|random|energy:TAU|oracle) [--split test]
                   [--episodes N] [--out DIR]
    drrl compare   --algos ppo,a2c --policies mlp,transformer --seeds K --timesteps N [--out DIR]
    drrl report    DIR [--model-metrics]   (rebuild a comparison's report from its saved rows)
    drrl inspect   [--document I] [--energy 0.9] [--out DIR]
    drrl profile   [--lengths 512,2048,4096,8192] [--refresh] [--out DIR] [--env-kwargs k=v ...]
    drrl tradeoff  [--betas 1,2,3] [--documents 12] [--split train] [--env-kwargs k=v ...]
    drrl precompute [--split train] [--documents N] [--env-kwargs k=v ...]   (fill the analysis cache)
    drrl generate  --prompt-file FILE [--policy uniform:int4] [--budget 0.25] [--compare dynamic,uniform:r16,...]
                   [--eval FILE]   (DRRL-KV-v0's cache serving generation; experiments/generate.py)
    drrl train-kv  --sensitivity FILE [--algo ppo] [--timesteps 200000]   (DRRL-KV-fast-v0; experiments/train_kv.py)

Each subcommand is one module with ``add_parser(sub)`` (``experiments/commands/``, ``generate.py``,
``train_kv.py``); this module assembles them.  Bad input exits with status 2 and a one-line message
on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from experiments import generate, train_kv
from experiments.commands import (
    compare,
    evaluate,
    inspect,
    precompute,
    profile,
    report,
    rollout,
    tradeoff,
    train,
    tune,
)

SUBCOMMANDS = (
    rollout,
    train,
    evaluate,
    compare,
    tune,
    report,
    profile,
    tradeoff,
    precompute,
    generate,
    train_kv,
    inspect,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``drrl`` parser: each subcommand's module registers its own (``add_parser(sub)``)."""
    parser = argparse.ArgumentParser(
        prog="drrl", description="DR-RL rank selection: rollouts, training, evaluation and comparison on DRRL-v0"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return parser


# Smallest value of each integer flag (by its argparse dest), checked before any work starts.
MINIMUMS = {
    "episodes": 1,
    "seeds": 1,
    "timesteps": 1,
    "seed": 0,
    "documents": 1,
    "jobs": 1,
    "pretrain_bc": 0,
    "trials": 1,
    "eval_episodes": 1,
    "tune_documents": 1,
    "n_envs": 1,
    "eval_freq": 1,
    "eval_documents": 1,
    "n_steps": 2,
    "document": 0,
}


def check_counts(args: argparse.Namespace) -> None:
    for name, low in MINIMUMS.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep stderr for our own one-line errors
    try:
        check_counts(args)
        if getattr(args, "env_id", "") is None and args.command not in ("train", "evaluate"):
            args.env_id = "DRRL-v0"
        return args.func(args)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"drrl {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
