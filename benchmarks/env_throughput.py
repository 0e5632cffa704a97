"""Environment throughput (steps/s, reset included) for the default and the synthetic source.

    python benchmarks/env_throughput.py [--episodes 4000] [--sources model,synthetic]

For each source it prints four figures, random actions throughout:
  cold       first episode on each document, nothing cached: model forward (or generation)
             + analysis + steps;
  disk       first episode of a new env whose on-disk analysis cache is filled (a later run);
  warm       episodes on documents already analysed in memory (most of a training run);
  amortized  all episodes of one run of --episodes episodes drawn uniformly from the train
             split, starting with an empty cache; construction excluded, reset included.
Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from drrl_env.env import RankSelectionEnv
from drrl_env.costs.latency import machine_description


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
    args = parser.parse_args()
    print(f"machine: {machine_description()}")
    for source in args.sources.split(","):
        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory() as cache:
            env = RankSelectionEnv(source=source, cache_dir=cache)
            n_docs = len(env.document_names())
            plan = rng.integers(n_docs, size=args.episodes)
            steps, seconds = run(env, list(plan), rng)
            first = list(dict.fromkeys(plan.tolist()))
            cold_steps, cold_seconds = run(RankSelectionEnv(source=source, cache_dir=None), first[:8], rng)
            disk_steps, disk_seconds = run(RankSelectionEnv(source=source, cache_dir=cache), first[:8], rng)
            warm_steps, warm_seconds = run(env, first[:50] * 2, rng)
        print(f"{source:9s}: {n_docs} train documents, {args.episodes} episodes ({len(first)} distinct), "
              f"{steps} steps")
        print(f"  cold      {cold_steps / cold_seconds:9.0f} steps/s  (first episode on 8 documents, no cache)")
        print(f"  disk      {disk_steps / disk_seconds:9.0f} steps/s  (first episode on 8 documents, disk cache filled)")
        print(f"  warm      {warm_steps / warm_seconds:9.0f} steps/s  (documents already analysed in memory)")
        print(f"  amortized {steps / seconds:9.0f} steps/s  ({args.episodes} episodes from an empty cache)")


if __name__ == "__main__":
    main()
