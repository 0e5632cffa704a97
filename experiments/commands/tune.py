"""``drrl tune``: an agent's hyperparameters searched with Optuna (``experiments/tune.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from experiments.commands.common import backend_args, env_args
from experiments.options import parse_env_kwargs


def run(args: argparse.Namespace) -> int:
    from experiments.train import TrainConfig
    from experiments.tune import tune

    base = TrainConfig(
        env_id=args.env_id,
        algo=args.algo,
        policy=args.policy,
        timesteps=args.timesteps,
        seed=args.seed,
        env_kwargs=parse_env_kwargs(args.env_kwargs),
    )
    zoo = tune(
        base, args.trials, Path(args.out), backend=args.backend, address=args.address, eval_episodes=args.eval_episodes
    )
    print((zoo.parent / "study.md").read_text())
    print(f"best hyperparameters: {zoo}  (train with: drrl train --config {zoo})")
    return 0


def add_parser(sub: Any) -> None:
    """Registers ``drrl tune`` on the CLI's subparsers."""
    p = sub.add_parser(
        "tune",
        help="search an agent's hyperparameters with Optuna (TPE, median pruning), scored on "
        "the validation split; writes an RL-Zoo <algo>.yml",
    )
    p.add_argument("--algo", default="ppo", help="ppo, a2c, dqn, maskable_ppo or recurrent_ppo")
    p.add_argument("--policy", default="mlp", help="mlp or transformer")
    p.add_argument("--trials", type=int, default=20, help="hyperparameter sets to try")
    p.add_argument("--timesteps", type=int, default=20_000, help="environment steps per trial")
    p.add_argument("--seed", type=int, default=0, help="seed of every trial's agent and env, and of the sampler")
    p.add_argument("--eval-episodes", type=int, default=4, help="validation documents each evaluation plays")
    p.add_argument("--out", default="experiments/results/tune", help="folder for <algo>.yml, study.md and trials/")
    backend_args(p)
    env_args(p)
    p.set_defaults(func=run)
