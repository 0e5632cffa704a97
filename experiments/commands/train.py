"""``drrl train``: one agent trained on DRRL-v0 or DRRL-LM-v0 (``experiments/train.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from experiments.commands.common import env_args
from experiments.options import parse_env_kwargs


def run(args: argparse.Namespace) -> int:
    from experiments.train import TrainConfig, TrainingInterrupted, train

    overrides = {
        "env_id": args.env_id,
        "algo": args.algo,
        "policy": args.policy,
        "timesteps": args.timesteps,
        "seed": args.seed,
        "n_envs": args.n_envs,
        "vec_env": args.vec_env,
        "pretrain_bc": args.pretrain_bc,
        "eval_freq": args.eval_freq,
    }
    if args.env_kwargs:
        overrides["env_kwargs"] = parse_env_kwargs(args.env_kwargs)
    if args.resume:
        run = Path(args.resume)
        if not (run / "config.yaml").exists():
            raise ValueError(f"--resume {args.resume!r} is not a run folder (no config.yaml)")
        config = _config_of_run(run, overrides)
    elif args.config:
        config = TrainConfig.from_file(args.config, **overrides)
    else:
        config = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    try:
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        run_dir = train(config, args.logdir, resume=args.resume, progress_bar=progress)
    except TrainingInterrupted as stop:
        print(
            f"interrupted: checkpoint saved; continue with --resume {stop.run_dir}"
            if stop.run_dir
            else "interrupted before training began: nothing was saved",
            file=sys.stderr,
        )
        return 130
    print(run_dir)
    return 0


def _config_of_run(run: Path, overrides: dict[str, Any]):
    """The run's saved train settings (its resolved env config dropped), with ``overrides`` on top."""
    from experiments.train import TrainConfig, read_yaml_mapping

    saved = read_yaml_mapping(run / "config.yaml", "run config")
    if not saved:
        raise ValueError(f"run config {str(run / 'config.yaml')!r} is empty; the run cannot be resumed")
    saved.pop("env_config", None)
    return TrainConfig.from_dict({**saved, **{k: v for k, v in overrides.items() if v is not None}})


def add_parser(sub: Any) -> None:
    """Registers ``drrl train`` on the CLI's subparsers."""
    p = sub.add_parser("train", help="train one agent (TensorBoard events in its run folder)")
    p.add_argument("--algo", help="ppo, a2c, dqn, maskable_ppo or recurrent_ppo")
    p.add_argument("--policy", help="mlp (SB3's MultiInputPolicy) or transformer (agents/transformer_policy.py)")
    p.add_argument("--timesteps", type=int, help="environment steps to train for")
    p.add_argument("--seed", type=int, help="seed of the agent and the env")
    p.add_argument(
        "--config",
        help="YAML file with train settings (experiments/configs/*.yaml), or an RL-Zoo "
        "hyperparameter file such as the ppo.yml that drrl tune writes",
    )
    p.add_argument("--logdir", default="runs", help="folder that receives the run folder (TensorBoard events, model)")
    p.add_argument("--pretrain-bc", type=int, help="behaviour-clone the oracle on N training documents first")
    p.add_argument("--n-envs", type=int, help="environments stepped together per update")
    p.add_argument(
        "--vec-env",
        choices=("dummy", "subproc"),
        help="how the --n-envs environments step: dummy (in this process, SB3 DummyVecEnv; the default) "
        "or subproc (a process each, SB3 SubprocVecEnv)",
    )
    p.add_argument("--eval-freq", type=int, help="steps between evaluations on the test split (eval/ tags)")
    p.add_argument("--resume", help="run folder to continue from its checkpoint")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on when stderr is a terminal)",
    )
    env_args(p)
    p.set_defaults(func=run)
