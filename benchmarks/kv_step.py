"""What one DRRL-KV-v0 step costs against one exact forward of the same block at the same context.

    python benchmarks/kv_step.py [--documents 1] [--split validation] [--policy uniform:r16] [--repeats 3]

For every step of an episode (SmolLM2-135M, 4096 tokens by default), interleaved: the environment's
step (storing the due block, the block's forward through the compressed cache with drrl's attention
function, the reward, the next observation), and the exact forward of the same 128 tokens over an
exact ``DynamicCache`` of the same context with SDPA (the model as transformers runs it; median of
``--repeats``, the cache cropped back between repeats).  Prints the ratio per context length and the
absolute steps per second; the target is a step within 1.25x of the exact forward.  Not a test.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from transformers import DynamicCache

import drrl_env  # noqa: F401
from agents.kv_baselines import make_kv_baseline
from drrl_env.costs.latency import machine_description


@torch.no_grad()
def exact_forward_seconds(model, ids: torch.Tensor, context: int, block: int, repeats: int) -> float:
    """Median seconds of the forward of ids[context:context + block] over an exact cache of ids[:context]."""
    model.set_attn_implementation("sdpa")
    try:
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[None, :context], cache=cache, use_cache=True)
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            model(input_ids=ids[None, context : context + block], cache=cache, use_cache=True)
            times.append(time.perf_counter() - begin)
            cache.crop(-block)  # back to the context: negative counts are tokens removed
        return float(np.median(times))
    finally:
        model.set_attn_implementation("drrl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=1)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--policy", default="uniform:r16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = gym.make("DRRL-KV-v0", split=args.split)
    unwrapped = env.unwrapped
    policy = make_kv_baseline(args.policy, env)
    block = unwrapped.config.block
    print(f"# {machine_description()}; torch threads {torch.get_num_threads()}")
    print(f"# python benchmarks/kv_step.py --documents {args.documents} --split {args.split} --policy {args.policy}")
    print(f"{'context':>8} {'step s':>8} {'exact s':>8} {'ratio':>6}")
    ratios, steps_seconds = [], []
    for doc in range(min(args.documents, len(unwrapped.document_names()))):
        obs, _ = env.reset(options={"document": doc})
        ids = unwrapped.source.token_ids(doc)
        done = False
        while not done:
            context = unwrapped.cache.seen
            begin = time.perf_counter()
            obs, _, done, _, _ = env.step(policy.predict(obs)[0])
            step = time.perf_counter() - begin
            if context + block >= len(ids):
                break
            exact = exact_forward_seconds(unwrapped.model, ids, context, block, args.repeats)
            ratios.append(step / exact)
            steps_seconds.append(step)
            print(f"{context:8d} {step:8.3f} {exact:8.3f} {step / exact:6.2f}", flush=True)
    print(
        f"median ratio {np.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}); "
        f"{1 / np.mean(steps_seconds):.2f} steps/s"
    )


if __name__ == "__main__":
    main()
