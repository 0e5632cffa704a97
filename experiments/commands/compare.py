"""``drrl compare``: a grid of agents trained and compared with the baselines (``experiments/compare.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from experiments.commands.common import backend_args, env_args, split_list
from experiments.options import parse_env_kwargs


def run(args: argparse.Namespace) -> int:
    from agents.sb3_agents import ALGORITHMS, POLICIES
    from experiments.compare import compare

    algos, policies = split_list(args.algos), split_list(args.policies)
    for algo in algos:
        if algo not in ALGORITHMS:
            raise ValueError(f"unknown algo {algo!r}; choose from {sorted(ALGORITHMS)}")
    for policy in policies:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {list(POLICIES)}")
    report = compare(
        algos,
        policies,
        args.seeds,
        args.timesteps,
        parse_env_kwargs(args.env_kwargs),
        Path(args.out),
        args.episodes,
        jobs=args.jobs,
        pretrain_bc=args.pretrain_bc,
        tune_documents=args.tune_documents,
        env_id=args.env_id,
        backend=args.backend,
        address=args.address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        planner=not args.no_planner,
        latency_rounds=args.latency_rounds,
    )
    print(report.read_text())
    return 0


def add_parser(sub: Any) -> None:
    """Registers ``drrl compare`` on the CLI's subparsers."""
    p = sub.add_parser("compare", help="train a grid of agents and write a comparison report")
    p.add_argument(
        "--algos",
        default="ppo,a2c,dqn,maskable_ppo",
        help="comma-separated algorithms: ppo, a2c, dqn, maskable_ppo, recurrent_ppo",
    )
    p.add_argument("--policies", default="mlp,transformer", help="comma-separated policies: mlp, transformer")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per (algo, policy): runs use seeds 0..N-1")
    p.add_argument("--timesteps", type=int, default=20_000, help="environment steps per training run")
    p.add_argument("--episodes", type=int, default=16, help="test documents to evaluate on")
    p.add_argument("--jobs", type=int, default=1, help="training processes in parallel (local backend)")
    backend_args(p)
    p.add_argument(
        "--cpus-per-run",
        type=float,
        default=1.0,
        help="CPUs each training run declares on Ray (a measured cost model takes a whole node)",
    )
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each training run declares on Ray")
    p.add_argument(
        "--pretrain-bc",
        type=int,
        default=0,
        help="behaviour-clone the oracle on N training documents before RL (0 = no pre-training)",
    )
    p.add_argument(
        "--tune-documents",
        type=int,
        default=16,
        help="training documents on which the fixed rank and energy threshold are tuned",
    )
    p.add_argument(
        "--latency-rounds",
        type=int,
        default=3,
        help="interleaved rounds of the measured attention latency per row (0 = not measured)",
    )
    p.add_argument(
        "--no-planner",
        action="store_true",
        help="leave out the non-myopic reference (it replays each test document 1 + layers x ranks times)",
    )
    p.add_argument(
        "--out",
        default="experiments/results/latest",
        help="folder for runs/, rows.json, compare.json, report.md and plots",
    )
    env_args(p)
    p.set_defaults(func=run)
