"""What several ``drrl`` subcommands share: the environment and backend arguments, option parsing."""

from __future__ import annotations

import argparse
from typing import Any

from experiments.backends import backend_names
from experiments.options import parse_env_kwargs

DEFAULT_POLICIES = "random,fixed:8,fixed:16,full,energy:0.9,oracle"


def env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The registered ``--env-id``'s keyword arguments with ``--env-kwargs`` on top (for commands that
    build ``RankSelectionEnv`` directly rather than through ``gym.make``)."""
    import gymnasium as gym

    import drrl_env  # noqa: F401

    return {**gym.spec(args.env_id).kwargs, **parse_env_kwargs(args.env_kwargs)}


def split_list(text: str) -> list[str]:
    """``"a,b,,c"`` -> ``["a", "b", "c"]``."""
    return [item for item in text.split(",") if item]


def backend_args(p: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--address``."""
    p.add_argument(
        "--backend",
        default="local",
        choices=backend_names(),
        help="where the work runs: local (this machine) or ray (a Ray cluster; pip install -e '.[ray]')",
    )
    p.add_argument("--address", help="address of a running Ray cluster (default: start Ray on this machine)")


def env_args(p: argparse.ArgumentParser) -> None:
    """``--env-id`` (a RankSelectionEnv id) and ``--env-kwargs``."""
    from drrl_env.registration import RANK_ENV_IDS

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
