"""Fast-mode scores of DRRL-KV-v0 policies: the surrogate's predicted excess NLL per document.

    python benchmarks/kv_fast_scores.py [--sensitivity experiments/results/kv/fast_mode.npz] [--documents 6]
        [--split validation] [--policies uniform:int4,greedy,energy:0.9,static:FILE,RUN/model.zip]

Each policy (a baseline of ``agents/kv_baselines.py`` or a ``drrl train-kv`` agent) plays the first
``--documents`` documents of ``--split`` in ``DRRL-KV-fast-v0``; the row is the predicted excess NLL
(nats per document, what training optimizes), mean and per document.  A prediction, not a
measurement: ``benchmarks/kv_headroom.py`` plays the same policies in the closed loop.  Not a test.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

import drrl_env  # noqa: F401
from drrl_env.play import play, predicting
from experiments.generate import load_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensitivity", default="experiments/results/kv/fast_mode.npz")
    parser.add_argument("--documents", type=int, default=6)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--policies", default="uniform:int4,greedy,energy:0.9")
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = gym.make("DRRL-KV-fast-v0", sensitivity=args.sensitivity, split=args.split)
    documents = range(min(args.documents, len(env.unwrapped.document_names())))
    print(
        f"# python benchmarks/kv_fast_scores.py --documents {args.documents} --split {args.split} "
        f"--policies {args.policies}"
    )
    print(f"{'policy':<60} {'nats/doc':>8}   per document")
    for spec in (p for p in args.policies.split(",") if p):
        policy = load_policy(spec, env.unwrapped.closed)
        scores = [play(env, predicting(policy), d)[-1].info["predicted_excess_nll"] for d in documents]
        print(f"{spec:<60} {np.mean(scores):8.1f}   " + " ".join(f"{x:.0f}" for x in scores))


if __name__ == "__main__":
    main()
