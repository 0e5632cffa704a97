"""Training throughput with vectorized envs: PPO on DRRL-v0 with 1 env, 2 envs stepped in this
process (SB3 ``DummyVecEnv``) and 2 envs in subprocesses (``SubprocVecEnv``), side by side.

    python benchmarks/vec_env.py [--timesteps 4096] [--source model]

The training split is analysed into the disk cache first (``drrl precompute``), so every env, in
any process, starts warm.  Each configuration learns ``--timesteps`` steps from scratch (rollouts
of 512 steps in all, whatever the number of envs); the speedup is over the single env.  Not a test.
"""

from __future__ import annotations

import argparse
import time

from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import drrl_env  # noqa: F401
from agents.sb3_agents import make_agent
from drrl_env.costs.latency import machine_description
from experiments.precompute import precompute

SETUPS = (
    ("1 env", 1, DummyVecEnv),
    ("2 envs, DummyVecEnv", 2, DummyVecEnv),
    ("2 envs, SubprocVecEnv", 2, SubprocVecEnv),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timesteps", type=int, default=4096)
    parser.add_argument("--source", default="model")
    args = parser.parse_args()
    kwargs = {"source": args.source, "split": "train", "render_mode": None}
    precompute("DRRL-v0", {k: v for k, v in kwargs.items() if k != "render_mode"})
    print(f"machine: {machine_description()}; source {args.source!r}, PPO, {args.timesteps} steps per run")
    for policy in ("mlp", "transformer"):
        base = None
        for label, n_envs, vec_cls in SETUPS:
            envs = make_vec_env("DRRL-v0", n_envs=n_envs, seed=0, env_kwargs=kwargs, vec_env_cls=vec_cls)
            model = make_agent("ppo", envs, policy, seed=0, n_steps=512 // n_envs, batch_size=128)
            start = time.perf_counter()
            model.learn(args.timesteps)
            rate = args.timesteps / (time.perf_counter() - start)
            envs.close()
            base = base or rate
            print(f"  {policy:>11}  {label:<22} {rate:7.0f} steps/s  ({rate / base:.2f}x the single env)")


if __name__ == "__main__":
    main()
