"""Attention latency of fixed-rank plans in a real forward pass, against exact attention.

    python benchmarks/forward_latency.py [--ranks 8,16,32,48] [--rounds 5] [--document 0] [--pydoc-document]
                                         [--env-kwargs k=v ...]

Runs the env's model on one document with every layer and segment at one rank (the plan that a
``fixed:R`` policy produces), through the same segment-wise code as the reward's end-of-episode
term and ``drrl evaluate``'s ``attention_latency_ratio`` (``RankSelectionEnv.model_outputs``).
One warm-up pass per plan, then ``--rounds`` rounds that each run every plan once; the ratio to
exact attention is taken within each round.  Prints, per plan, the median attention seconds of
all layers, the median ratio and its spread (interquartile range / median).  Needs
``source=model``; ``--pydoc-document`` makes the corpus ten long documents (every pydoc topic, joined
in ten groups), for long-context shapes; the timed one is the first (latency does not depend on the
text, and a calibrated method's bases come from those of the ten in the training split).  Not a test.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from drrl_env.costs.latency import machine_description, summarize
from drrl_env.env import RankSelectionEnv
from experiments.options import parse_env_kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="8,16,32,48", help="fixed ranks to compare with exact attention")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each runs every plan once)")
    parser.add_argument("--document", type=int, default=0, help="document index in the env's split")
    parser.add_argument(
        "--pydoc-document",
        action="store_true",
        help="ten long documents of the pydoc topics joined (truncated at max_seq_len)",
    )
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="env options")
    args = parser.parse_args()
    kwargs = parse_env_kwargs(args.env_kwargs)
    if args.pydoc_document:
        from pydoc_data.topics import topics

        names = sorted(topics)
        kwargs.update(corpus=["\n\n".join(topics[name] for name in names[i::10]) for i in range(10)], split="all")
    env = RankSelectionEnv(**kwargs)
    spec, cfg = env.source.spec, env.config
    segments = env.analysis(args.document).n_segments
    ranks = [int(r) for r in args.ranks.split(",")] + [spec.head_dim]
    plans = {r: np.full((spec.n_layers, segments), r) for r in ranks}
    for plan in plans.values():  # warm-up
        env.model_outputs(args.document, plan)
    rounds = np.array(
        [
            [env.model_outputs(args.document, plan).attention_seconds for plan in plans.values()]
            for _ in range(args.rounds)
        ]
    )  # (rounds, plans) seconds
    ratios = rounds / rounds[:, -1:]
    seq_len = env.analysis(args.document).seq_len
    print(
        f"{machine_description(env.device)}, dtype of the model float32; model {cfg.model}: {spec.n_layers} layers, "
        f"{spec.n_heads} query / {spec.n_kv_heads} K/V heads of width {spec.head_dim}, causal={spec.causal}"
    )
    print(
        f"document {args.document}: {seq_len} tokens in {segments} segments of {cfg.segment_len}; method "
        f"{cfg.method}, compress_values={cfg.compress_values}; {args.rounds} rounds after one warm-up"
    )
    print(f"{'rank':>5} {'attention ms':>13} {'ratio to exact':>15} {'spread':>7}")
    for column, rank in enumerate(ranks):
        ratio = summarize(list(ratios[:, column]))
        print(f"{rank:>5} {np.median(rounds[:, column]) * 1e3:>13.1f} {ratio.median:>15.3f} {ratio.spread:>7.1%}")
    if env.device.type == "cuda":
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated(env.device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
