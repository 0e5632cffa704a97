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

Bad input exits with status 2 and a one-line message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from agents.baselines import BASELINES
from drrl_env.attention.methods import method_names
from drrl_env.config import SPLITS
from experiments.backends import backend_names
from experiments.options import parse_env_kwargs

DEFAULT_POLICIES = "random,fixed:8,fixed:16,full,energy:0.9,oracle"


def env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The registered ``--env-id``'s keyword arguments with ``--env-kwargs`` on top (for commands that
    build ``RankSelectionEnv`` directly rather than through ``gym.make``)."""
    import gymnasium as gym

    import drrl_env  # noqa: F401

    return {**gym.spec(args.env_id).kwargs, **parse_env_kwargs(args.env_kwargs)}


def _split_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def cmd_rollout(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import drrl_env  # noqa: F401
    from agents.baselines import make_baseline
    from experiments.rollout import evaluate, summary_table

    env = gym.make(args.env_id, **{**parse_env_kwargs(args.env_kwargs), "split": args.split})
    policies = {name: make_baseline(name, env, seed=args.seed) for name in _split_list(args.policies)}
    documents = range(min(args.episodes, len(env.unwrapped.document_names())))
    rows = evaluate(env, policies, documents)
    config = env.unwrapped.config
    print(
        f"{args.env_id} on {len(documents)} {args.split} documents; reward = {config.alpha} * fidelity "
        f"- {config.beta} * cost - {config.gamma} * perturbation; cost model {config.cost_model!r}"
    )
    print(summary_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in rows], indent=1))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
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


def cmd_evaluate(args: argparse.Namespace) -> int:
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
    if env.unwrapped.config.source == "model" and not env.unwrapped.config.per_head:
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


def cmd_compare(args: argparse.Namespace) -> int:
    from agents.sb3_agents import ALGORITHMS, POLICIES
    from experiments.compare import compare

    algos, policies = _split_list(args.algos), _split_list(args.policies)
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


def cmd_tune(args: argparse.Namespace) -> int:
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


def cmd_report(args: argparse.Namespace) -> int:
    from experiments.compare import rebuild_report

    print(rebuild_report(Path(args.folder), model_metrics=args.model_metrics).read_text())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from drrl_env.env import RankSelectionEnv
    from experiments.inspect_document import inspect

    env = RankSelectionEnv(**{**env_kwargs(args), "split": args.split})
    if not 0 <= args.document < len(env.document_names()):
        raise ValueError(f"--document {args.document} must lie in 0..{len(env.document_names()) - 1}")
    for path in inspect(env, args.document, args.energy, Path(args.out)):
        print(path)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from drrl_env.cache import default_cache_root
    from drrl_env.env import RankSelectionEnv
    from experiments.profile import format_table, plot_speedups, profile_table

    env = RankSelectionEnv(**{**env_kwargs(args), "method": "svd"})  # the shapes only: no calibration needed
    lengths = [int(n) for n in _split_list(args.lengths)]
    tables = profile_table(env, _split_list(args.methods), lengths, default_cache_root(), args.refresh)
    print(format_table(env, lengths, tables))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for method, table in tables.items():
        print(f"profile of {method}: {table.profile.path}")
    print(f"plot: {plot_speedups(env, lengths, tables, out / 'speedup.png')}")
    return 0


def cmd_tradeoff(args: argparse.Namespace) -> int:
    from drrl_env.env import RankSelectionEnv
    from experiments.trade_off import fixed_rank_terms, format_trade_offs

    env = RankSelectionEnv(**{**env_kwargs(args), "split": args.split, "safety": False})
    betas = [float(b) for b in _split_list(args.betas)] if args.betas else [env.config.beta]
    print(format_trade_offs(fixed_rank_terms(env, args.documents), betas))
    return 0


def cmd_precompute(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    from drrl_env.registration import RANK_ENV_IDS

    parser = argparse.ArgumentParser(
        prog="drrl", description="DR-RL rank selection: rollouts, training, evaluation and comparison on DRRL-v0"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def backend_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--backend",
            default="local",
            choices=backend_names(),
            help="where the work runs: local (this machine) or ray (a Ray cluster; pip install -e '.[ray]')",
        )
        p.add_argument("--address", help="address of a running Ray cluster (default: start Ray on this machine)")

    def env_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--env-id",
            choices=RANK_ENV_IDS,
            help="the registered environment: DRRL-v0 (MiniLM, pydoc text; the default) or DRRL-LM-v0 "
            "(SmolLM2-135M, 4096 tokens of standard-library documentation; needs the [llm] extra); "
            "train and evaluate --model default to the run's own",
        )
        p.add_argument(
            "--env-kwargs",
            nargs="*",
            default=[],
            metavar="KEY=VALUE",
            help="environment options (EnvConfig fields) on top of the env id's",
        )

    p = sub.add_parser("rollout", help="run baseline policies and print their reward terms")
    p.add_argument("--policies", default=DEFAULT_POLICIES, help=f"comma-separated, of: {', '.join(BASELINES)}")
    p.add_argument("--episodes", type=int, default=4, help="documents to run (the first N of the split)")
    p.add_argument("--split", default="test", choices=SPLITS, help="documents to run on")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument("--json", help="also write the per-episode rows to this file")
    env_args(p)
    p.set_defaults(func=cmd_rollout)

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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained run or a baseline on held-out documents")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="run folder or saved agent zip")
    who.add_argument("--baseline", help=f"one of: {', '.join(BASELINES)}")
    p.add_argument("--split", default="test", choices=SPLITS, help="documents to evaluate on")
    p.add_argument("--episodes", type=int, default=8, help="documents to evaluate (the first N of the split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument("--out", help="folder for episodes.json and episodes.csv")
    env_args(p)
    p.set_defaults(func=cmd_evaluate)

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
    p.set_defaults(func=cmd_compare)

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
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", help="rebuild a comparison's report.md from its rows.json and compare.json")
    p.add_argument("folder", help="a drrl compare output folder (with rows.json and compare.json)")
    p.add_argument(
        "--model-metrics",
        action="store_true",
        help="re-measure end-of-model fidelity, retrieval and attention latency from the saved ranks",
    )
    p.set_defaults(func=cmd_report)

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
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "tradeoff",
        help="play every fixed rank and tell, per cost weight beta, whether the "
        "configuration poses a trade-off (on this device, for measured costs)",
    )
    p.add_argument("--betas", help="comma-separated cost weights to evaluate (default: the env's beta)")
    p.add_argument("--documents", type=int, default=12, help="documents to play (the first N of the split)")
    p.add_argument("--split", default="train", choices=SPLITS, help="documents to play")
    env_args(p)
    p.set_defaults(func=cmd_tradeoff)

    p = sub.add_parser("precompute", help="fill the on-disk analysis cache of a split ahead of a run")
    p.add_argument("--split", default="train", choices=SPLITS, help="documents to analyse")
    p.add_argument("--documents", type=int, help="the first N documents of the split (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="analysis processes in parallel (local backend)")
    backend_args(p)
    env_args(p)
    p.set_defaults(func=cmd_precompute)

    from experiments.generate import add_parser as add_generate
    from experiments.train_kv import add_parser as add_train_kv

    add_generate(sub)
    add_train_kv(sub)

    p = sub.add_parser("inspect", help="plot one document's spectra and minimal ranks")
    p.add_argument("--document", type=int, default=0, help="document index in the split")
    p.add_argument("--split", default="test", choices=SPLITS, help="the document's split")
    p.add_argument(
        "--energy", type=float, default=0.9, help="energy fraction whose minimal rank is plotted per layer and segment"
    )
    p.add_argument("--out", default="inspect", help="folder for the plots")
    env_args(p)
    p.set_defaults(func=cmd_inspect)
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
