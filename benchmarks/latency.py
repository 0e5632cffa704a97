"""Measured latency ratio to exact attention next to the FLOP ratio, and the noise of the measurement.

    python benchmarks/latency.py [--repeats 3] [--threads N] [--lengths 512,2048,4096,8192]
                                 [--methods svd,shared_key,calibrated] [--env-id DRRL-v0] [--env-kwargs k=v ...]

Profiles the env's attention shape under each method (``drrl profile``'s table) ``--repeats``
times from scratch (no cache) and prints the first table, then the spread over the repeats
(max / min - 1 per method, length and rank, summarised by its median and maximum) of the latency
ratios and of the absolute medians.
Runs on CUDA when ``device=cuda`` is passed.  Not a test.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

import drrl_env  # noqa: F401
from experiments.options import parse_env_kwargs
from experiments.profile import format_table, profile_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", default="512,2048,4096,8192")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--methods", default="svd,shared_key,calibrated,loki")
    parser.add_argument("--env-id", default="DRRL-v0")
    parser.add_argument("--env-kwargs", nargs="*", default=[])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = gym.make(args.env_id, **{**parse_env_kwargs(args.env_kwargs), "method": "svd"}).unwrapped  # shapes only
    lengths, methods = [int(n) for n in args.lengths.split(",")], args.methods.split(",")
    runs = [profile_table(env, methods, lengths, None, refresh=True) for _ in range(args.repeats)]
    print(format_table(env, lengths, runs[0]))
    seconds = np.stack(
        [[[run[m].profile.seconds(n) for n in lengths] for m in methods] for run in runs]
    )  # (repeats, methods, lengths, ranks)
    ratios = np.stack([[run[m].measured for m in methods] for run in runs])[..., :-1]  # (..., ranks below full)
    for name, values in (("latency ratios (what the env uses)", ratios), ("absolute medians", seconds)):
        spread = values.max(0) / values.min(0) - 1
        print(
            f"spread over {args.repeats} fresh profiles (max/min - 1) of {name}: "
            f"median {np.median(spread):.1%}, max {spread.max():.1%}"
        )


if __name__ == "__main__":
    main()
