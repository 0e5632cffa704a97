"""Environment throughput (steps/s, reset included) for the default and the synthetic source.

    python benchmarks/env_throughput.py [--episodes 4000] [--sources model,synthetic] [--lm-episodes N]

For each source it prints four open-loop figures (``closed_loop=False``), random actions throughout:
  cold       first episode on each document, nothing cached: model forward (or generation)
             + analysis + steps;
  disk       first episode of a new env whose on-disk analysis cache is filled (a later run);
  warm       episodes on documents already analysed in memory (most of a training run);
  amortized  all episodes of one run of --episodes episodes drawn uniformly from the train
             split, starting with an empty cache; construction excluded, reset included.
For the model source it then prints the closed-loop figure (the default MDP): episodes on 8
documents whose layer 0 is already analysed (warm cache), every later layer analysed live.  With
``--lm-episodes N``, the same for ``DRRL-LM-v0`` (SmolLM2-135M, 4096 tokens) on N test documents
after one warm-up episode on each.
Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import gymnasium as gym
import numpy as np

import drrl_env  # noqa: F401  (registers the env ids)
from drrl_env.costs.latency import machine_description
from drrl_env.env import RankSelectionEnv


def run(env: RankSelectionEnv, documents: list[int], rng: np.random.Generator) -> tuple[int, float]:
    steps = 0
    start = time.perf_counter()
    for doc in documents:
        env.reset(options={"document": int(doc)})
        done = False
        while not done:
            _, _, done, _, _ = env.step(int(rng.integers(len(env.ranks))))
            steps += 1
    return steps, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=4000)
    parser.add_argument("--sources", default="model,synthetic")
    parser.add_argument("--lm-episodes", type=int, default=0, help="also time closed-loop DRRL-LM-v0 on N documents")
    args = parser.parse_args()
    print(f"machine: {machine_description()}")
    for source in args.sources.split(","):
        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory() as cache:
            env = RankSelectionEnv(source=source, cache_dir=cache, closed_loop=False)
            n_docs = len(env.document_names())
            plan = rng.integers(n_docs, size=args.episodes)
            steps, seconds = run(env, list(plan), rng)
            first = list(dict.fromkeys(plan.tolist()))
            cold_steps, cold_seconds = run(
                RankSelectionEnv(source=source, cache_dir=None, closed_loop=False), first[:8], rng
            )
            disk_steps, disk_seconds = run(
                RankSelectionEnv(source=source, cache_dir=cache, closed_loop=False), first[:8], rng
            )
            warm_steps, warm_seconds = run(env, first[:50] * 2, rng)
            if source == "model":
                closed = RankSelectionEnv(cache_dir=cache)
                run(closed, first[:8], rng)  # layer 0 of each document in memory
                closed_steps, closed_seconds = run(closed, first[:8] * 2, rng)
        print(f"{source:9s}: {n_docs} train documents, {args.episodes} episodes ({len(first)} distinct), {steps} steps")
        print(f"  cold      {cold_steps / cold_seconds:9.0f} steps/s  (first episode on 8 documents, no cache)")
        print(
            f"  disk      {disk_steps / disk_seconds:9.0f} steps/s  (first episode on 8 documents, disk cache filled)"
        )
        print(f"  warm      {warm_steps / warm_seconds:9.0f} steps/s  (documents already analysed in memory)")
        print(f"  amortized {steps / seconds:9.0f} steps/s  ({args.episodes} episodes from an empty cache)")
        if source == "model":
            print(
                f"  closed    {closed_steps / closed_seconds:9.0f} steps/s  (closed loop, 8 documents, layer 0 "
                "cached, layers 1.. analysed live)"
            )
    if args.lm_episodes:
        lm = gym.make("DRRL-LM-v0", split="test").unwrapped
        documents = list(range(min(args.lm_episodes, len(lm.document_names()))))
        run(lm, documents, np.random.default_rng(0))  # warm-up: each document's layer 0 analysed (or read from disk)
        steps, seconds = run(lm, documents, np.random.default_rng(1))
        print(f"DRRL-LM-v0: closed loop, {len(documents)} test documents, {steps} steps: {steps / seconds:.1f} steps/s")


if __name__ == "__main__":
    main()
