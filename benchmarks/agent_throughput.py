"""Training throughput (env steps/s, learning included) per algorithm and policy on DRRL-v0.

    python benchmarks/agent_throughput.py [--timesteps 2048] [--source model]

Documents are analysed once before timing (the env's caches are warm, as in most of a training
run); each algorithm x policy then learns ``--timesteps`` steps from scratch, single env.
Not a test.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym

import drrl_env  # noqa: F401
from agents.sb3_agents import ALGORITHMS, POLICIES, make_agent
from drrl_env.costs.latency import machine_description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timesteps", type=int, default=2048)
    parser.add_argument("--source", default="model")
    args = parser.parse_args()
    print(f"machine: {machine_description()}; source {args.source!r}, {args.timesteps} steps per run")
    env = gym.make("DRRL-v0", source=args.source)
    for doc in range(len(env.unwrapped.document_names())):
        env.unwrapped.analysis(doc)  # warm the caches
    print(f"{'algo':>14} " + " ".join(f"{p:>12}" for p in POLICIES) + "   (steps/s)")
    for algo in ALGORITHMS:
        cells = []
        for policy in POLICIES:
            model = make_agent(algo, env, policy, seed=0)
            start = time.perf_counter()
            model.learn(args.timesteps)
            cells.append(f"{args.timesteps / (time.perf_counter() - start):>12.0f}")
        print(f"{algo:>14} " + " ".join(cells))


if __name__ == "__main__":
    main()
