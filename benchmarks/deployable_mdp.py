"""Figures behind the deployable MDP's defaults (README, "The MDP is deployable and sequential").

    python benchmarks/deployable_mdp.py [--documents 40]

Prints:
  scale      on the first ``--documents`` training documents of the default env (open loop), the
             median ratio of the bounds on the exact-output scale to those on the deployable value
             scale, and the share of low ranks each scale's safety threshold masks (the thresholds
             were moved by that ratio);
  features   the FLOP share of the observation's features (``feature_flop_ratio``) per method, for a
             MiniLM segment (128 queries over 512 keys, bidirectional) and SmolLM2's last segment at
             4096 tokens (512 queries, causal, 9 / 3 heads of width 64);
  splits     the pydoc topics left out as duplicates by the leak-free split.
Not a test.
"""

from __future__ import annotations

import argparse

import numpy as np

from drrl_env.analysis import RelativeBounds
from drrl_env.attention.methods import get_method, method_names
from drrl_env.costs.base import AttentionShape
from drrl_env.costs.counting import feature_flop_ratio
from drrl_env.env import RankSelectionEnv
from drrl_env.sources.corpus import load_corpus

OLD_THRESHOLDS, NEW_THRESHOLDS = (150.0, 300.0, 600.0), (60.0, 125.0, 250.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=40)
    args = parser.parse_args()

    env = RankSelectionEnv(closed_loop=False)
    scales = {True: [], False: []}
    for doc in range(min(args.documents, len(env.document_names()))):
        analysis = env.analysis(doc)
        for privileged in scales:
            bounds = RelativeBounds.of(analysis, np.inf, privileged).layer_pairs[..., :-1, -1]  # low ranks vs full
            scales[privileged].append(bounds.reshape(-1))
    exact, deployable = (np.concatenate(scales[p]) for p in (True, False))
    print(
        f"scale: {len(exact)} (layer, segment, low rank) bounds; exact-output scale / deployable scale: "
        f"median {np.median(exact / deployable):.2f} (10-90%: {np.percentile(exact / deployable, 10):.2f}"
        f"-{np.percentile(exact / deployable, 90):.2f})"
    )
    for old, new in zip(OLD_THRESHOLDS, NEW_THRESHOLDS):
        print(
            f"  masked above {old:g} on the exact scale: {(exact > old).mean():.1%};  above {new:g} on the "
            f"deployable scale: {(deployable > new).mean():.1%}"
        )

    shapes = {
        "MiniLM segment": dict(
            ranks=(4, 32), query_len=128, key_len=512, head_dim=32, n_heads=12, n_kv_heads=12, causal=False
        ),
        "SmolLM2 last segment at 4096": dict(
            ranks=(8, 64), query_len=512, key_len=4096, head_dim=64, n_heads=9, n_kv_heads=3, causal=True
        ),
    }
    for label, shape in shapes.items():
        shares = {
            m: feature_flop_ratio(
                AttentionShape(get_method(m), compress_values=True, segment_len=shape["query_len"], **shape)
            )
            for m in method_names()
        }
        print(f"features, {label}: " + ", ".join(f"{m} {v:.1%}" for m, v in shares.items()))

    from pydoc_data.topics import topics

    kept = {d.group for d in load_corpus(None)}
    dropped = sorted(set(topics) - kept)
    print(f"splits: {len(dropped)} of {len(topics)} pydoc topics left out as duplicates: {', '.join(dropped)}")


if __name__ == "__main__":
    main()
