"""``drrl evaluate``: a trained run or a baseline on held-out documents."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from agents.baselines import baseline_names
from drrl_env.config import SPLITS
from experiments.commands.common import env_args
from experiments.options import parse_env_kwargs


def run(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import drrl_env  # noqa: F401
    from agents.baselines import make_baseline
    from agents.sb3_agents import RUNTIME_FIELDS, check_env_config, env_config_dict, load_agent, read_saved_agent
    from experiments.rollout import add_model_metrics, evaluate, summary_table
    from experiments.train import read_yaml_mapping

    env_kwargs = parse_env_kwargs(args.env_kwargs)
    if args.model:
        path = Path(args.model)
        run_config = path / "config.yaml"
        path = path / "model.zip" if path.is_dir() else path
        saved = read_saved_agent(path).get("drrl_env_config", {})
        if args.env_id is None:
            args.env_id = (
                read_yaml_mapping(run_config, "run config").get("env_id", "DRRL-v0")
                if run_config.is_file()
                else "DRRL-v0"
            )
        trained = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k not in RUNTIME_FIELDS}
        env = gym.make(args.env_id, **{**trained, **env_kwargs, "split": args.split})
        differing = check_env_config(saved, env_config_dict(env))
        if differing:
            print(f"evaluating on other data than the agent was trained on: {', '.join(differing)}", file=sys.stderr)
        name, policy = path.parent.name or path.stem, load_agent(path, env)
    else:
        args.env_id = args.env_id or "DRRL-v0"
        env = gym.make(args.env_id, **{**env_kwargs, "split": args.split})
        name, policy = args.baseline, make_baseline(args.baseline, env, seed=args.seed)
    documents = range(min(args.episodes, len(env.unwrapped.document_names())))
    rows = evaluate(env, {name: policy}, documents)
    if env.unwrapped.source.runs_model and not env.unwrapped.config.per_head:
        rows = add_model_metrics(env, rows)
    print(summary_table(rows))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        records = [{k: v for k, v in r.as_dict().items() if k != "ranks"} for r in rows]
        (out / "episodes.json").write_text(json.dumps([r.as_dict() for r in rows], indent=1))
        with open(out / "episodes.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    return 0


def add_parser(sub: Any) -> None:
    """Registers ``drrl evaluate`` on the CLI's subparsers."""
    p = sub.add_parser("evaluate", help="evaluate a trained run or a baseline on held-out documents")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="run folder or saved agent zip")
    who.add_argument("--baseline", help=f"one of: {', '.join(baseline_names())}")
    p.add_argument("--split", default="test", choices=SPLITS, help="documents to evaluate on")
    p.add_argument("--episodes", type=int, default=8, help="documents to evaluate (the first N of the split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument("--out", help="folder for episodes.json and episodes.csv")
    env_args(p)
    p.set_defaults(func=run)
