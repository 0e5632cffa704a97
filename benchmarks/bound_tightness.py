"""How tight the output-perturbation bound is on real and synthetic attention.

    python benchmarks/bound_tightness.py [--documents 20]

For every (document, layer, segment, rank < d) it compares the bound on ||O_r - O||_F / ||O||_F
(over all heads, ``analysis.RelativeBounds``) with the measured relative error of the low-rank
output, and prints per rank: the median and the minimum of bound / measured, and the number of
violations (measured > bound), which must be 0.  Not a test.
"""

from __future__ import annotations

import argparse

import numpy as np

from drrl_env.env import RankSelectionEnv
from drrl_env.reward import output_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--sources", default="model,synthetic")
    args = parser.parse_args()
    for source in args.sources.split(","):
        for method in ("svd", "shared_key"):
            env = RankSelectionEnv(source=source, method=method, bound_clip=1e12)
            heads = env.source.spec.n_heads
            ratios = {r: [] for r in env.ranks[:-1]}
            violations = 0
            for doc in range(min(args.documents, len(env.document_names()))):
                data = env.documents.get(doc)
                for layer in range(env.source.spec.n_layers):
                    for seg in range(data.analysis.n_segments):
                        for index, rank in enumerate(env.ranks[:-1]):
                            measured = output_error(data.analysis, layer, seg, np.full(heads, index)).relative_error
                            bound = data.bounds.layer_pairs[layer, seg, index, -1]
                            violations += measured > bound * (1 + 1e-6)
                            if measured > 1e-12:
                                ratios[rank].append(bound / measured)
            print(f"{source} / {method}: bound / measured relative output error, {violations} violations")
            print("  rank   " + " ".join(f"{r:7d}" for r in ratios))
            print("  median " + " ".join(f"{np.median(v):7.0f}" for v in ratios.values()))
            print("  min    " + " ".join(f"{np.min(v):7.1f}" for v in ratios.values()))


if __name__ == "__main__":
    main()
