"""``drrl generate``: text generation (or teacher-forced scoring) over a KV cache whose blocks a policy stores.

    drrl generate --prompt-file FILE [--policy uniform:int4] [--budget 0.25] [--max-new-tokens 128]
                  [--compare dynamic,preallocated,uniform:r16,h2o:1,POLICY] [--eval FILE] [--path speed]
                  [--model smollm2-135m]

A policy is a DRRL-KV-v0 baseline (``agents/kv_baselines.py``; ``uniform:LEVEL`` is a fixed plan) or a
trained SB3 agent (``run/model.zip`` with its sidecar ``run/model.kv.json``, which names the model,
the ladder and the observation version; a mismatch is refused).  ``dynamic`` and ``preallocated`` are
transformers' own ``DynamicCache`` and ``StaticCache`` with SDPA: the exact references, with no
budget (the first concatenates the whole cache at every forward, the second writes in place into
buffers of the run's full length).  The cache is DRRL-KV-v0's ``CompressedKVCache``, on its speed path
by default (``--path``; ``drrl_env/kv/cache.py``), and the policy sees the environment's own
observation through the same ``BlockController``.  Prompts
and ``--eval`` documents run in blocks, as the environment feeds them; decoding is greedy.  Ctrl-C
prints what was generated so far with the figures up to then.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

DYNAMIC = "dynamic"  # transformers' DynamicCache: exact, extended by concatenation at every forward
PREALLOCATED = "preallocated"  # transformers' StaticCache: exact, written in place into the run's full length
EXACT_CACHES = (DYNAMIC, PREALLOCATED)


@dataclass
class Run:
    """One policy's generation: the text, and the figures of its table row."""

    policy: str
    text: str = ""
    tokens: list[int] = field(default_factory=list)  # the first sequence's generated token ids
    new_tokens: int = 0
    seconds: float = 0.0
    decide_seconds: float = 0.0
    cache_bytes: int = 0
    exact_bytes: int = 0
    resident_bytes: int = 0
    levels: str = "-"
    perplexity: float | None = None
    interrupted: bool = False

    def row(self) -> str:
        rate = self.new_tokens / self.seconds if self.seconds and self.new_tokens else float("nan")
        fraction = self.cache_bytes / self.exact_bytes if self.exact_bytes else float("nan")
        ppl = "-" if self.perplexity is None else f"{self.perplexity:.3f}"
        return (
            f"{self.policy:<18} {rate:9.2f} {self.cache_bytes / 2**20:9.2f} {fraction:8.3f} "
            f"{self.decide_seconds:8.2f} {ppl:>9}  {self.levels}"
        )


HEADER = f"{'policy':<18} {'tokens/s':>9} {'cache MiB':>9} {'of exact':>8} {'decide s':>8} {'ppl':>9}  levels stored"


def policy_metadata(env: Any) -> dict[str, Any]:
    """What a saved KV agent must share with the cache it serves (its sidecar ``model.kv.json``)."""
    from drrl_env.kv.observation import OBSERVATION_VERSION  # here: the CLI starts without transformers

    unwrapped = env.unwrapped
    cfg = unwrapped.config
    return {
        "model": cfg.model,
        "levels": [level.name for level in unwrapped.ladder],
        "n_layers": unwrapped.n_layers,
        "block": cfg.block,
        "window": cfg.window,
        "key_space": cfg.key_space,
        "observation_version": OBSERVATION_VERSION,
    }


def load_policy(spec: str, env: Any, controller: Any = None) -> Any:
    """``spec`` as a policy with ``predict``: a baseline name (for the generation ``controller`` serves,
    if given: its budget and length), or a saved agent's zip (sidecar checked)."""
    from agents.kv_baselines import make_kv_baseline

    if not spec.endswith(".zip"):
        return make_kv_baseline(spec, env, controller)
    path = Path(spec)
    sidecar = path.with_suffix(".kv.json")
    if not path.is_file() or not sidecar.is_file():
        raise FileNotFoundError(f"policy {spec!r} needs the file and its sidecar {sidecar.name}")
    saved = json.loads(sidecar.read_text())
    for key, value in policy_metadata(env).items():
        if saved.get(key) != value:
            raise ValueError(
                f"policy {spec!r} was trained with {key}={saved.get(key)!r}; this cache has {key}={value!r}"
            )
    from agents.sb3_agents import load_agent

    return load_agent(path)


def resident_bytes(cache: Any) -> int:
    """Bytes the key and value tensors of ``cache``'s layers hold (any transformers ``Cache``), the speed
    path's stored groups included: on the memory path, stored blocks are rebuilt dense, so only evicted
    tokens leave; on the speed path, rank-level sides are held as coefficients too."""
    groups = [group for layer in cache.layers for group in getattr(layer, "groups", {}).values()]
    return sum(
        t.numel() * t.element_size()
        for owner in [*cache.layers, *groups]
        for t in (owner.keys, owner.values)
        if isinstance(t, torch.Tensor)
    )


def level_summary(ladder: tuple, blocks: list) -> str:
    """Shares of the stored (layer, kind) decisions at each level, e.g. ``r16 60% evict 40%``."""
    counts = Counter(
        ladder[i].name for block in blocks for levels in (block.key_levels, block.value_levels) for i in levels
    )
    total = sum(counts.values())
    return " ".join(f"{name} {count / total:.0%}" for name, count in counts.most_common()) if total else "-"


@torch.no_grad()
def run_policy(
    env: Any,
    spec: str,
    prompt: torch.Tensor,
    max_new: int,
    score: torch.Tensor | None,
    progress: bool,
    path: str = "memory",
    allowed: torch.Tensor | None = None,
) -> Run:
    """Generates ``max_new`` tokens after ``prompt`` (L,) or (B, L) greedily (a batch shares one decision per
    block; ``Run.text`` is the first sequence's, ``Run.new_tokens`` counts every sequence's), or with ``score``
    (L,) the teacher-forced perplexity of its tokens after the first window + block, under policy ``spec``,
    on the cache's attention ``path`` ("memory", "speed" or "speed-bf16", ``drrl_env/kv/cache.py``).
    ``allowed`` (A,) restricts greedy decoding to those token ids (constrained decoding: the argmax of
    the logits over them); None allows the whole vocabulary."""
    if allowed is not None and (allowed.dim() != 1 or len(allowed) == 0):
        raise ValueError(f"allowed must be a non-empty 1-D tensor of token ids, got shape {tuple(allowed.shape)}")

    def greedy(last: torch.Tensor) -> torch.Tensor:  # (B, V) logits -> (B,) token ids
        if allowed is None:
            return last.argmax(-1)
        choices = allowed.to(last.device)
        return choices[last[:, choices].argmax(-1)]

    unwrapped = env.unwrapped
    model, block = unwrapped.model, unwrapped.config.block
    run = Run(spec)
    prompts = prompt if prompt.dim() == 2 else prompt[None]  # (B, L)
    batch = 1 if score is not None else prompts.shape[0]
    total = prompts.shape[1] + (0 if score is not None else max_new)
    if spec in EXACT_CACHES:
        from transformers import DynamicCache, StaticCache

        cache = (
            DynamicCache(config=model.config)
            if spec == DYNAMIC
            else StaticCache(config=model.config, max_cache_len=total)
        )
        controller = None
        model.set_attn_implementation("sdpa")
    else:

        def act(obs: dict[str, np.ndarray]) -> np.ndarray:
            begin = time.perf_counter()
            action = np.asarray(policy.predict(obs, deterministic=True)[0])
            run.decide_seconds += time.perf_counter() - begin
            return action

        cache, controller = unwrapped.serving_cache(act, total, batch, path)
        policy = load_policy(spec, env, controller)  # a baseline paces itself by this generation's budget
    try:
        ids = (score[None] if score is not None else prompts).to(unwrapped.device)  # (B, L)
        nll, scored_from = [], unwrapped.config.window + block
        stop = ids.shape[1] - 1 if score is not None else ids.shape[1]
        begin, position, logits = time.perf_counter(), 0, None
        while position < stop:  # the prompt (or the document) in blocks, as DRRL-KV-v0 feeds it
            end = min(stop, scored_from if position == 0 else position + block)
            logits = model(input_ids=ids[:, position:end], cache=cache, use_cache=True).logits  # (B, n, V)
            if score is not None and position >= scored_from:
                nll.append(
                    torch.nn.functional.cross_entropy(
                        logits[0].float(), ids[0, position + 1 : end + 1], reduction="sum"
                    )
                )
            position = end
            if progress:
                print(f"\r  {spec}: {position}/{stop} tokens", end="", file=sys.stderr, flush=True)
        if score is not None:
            run.perplexity = float(torch.exp(torch.stack(nll).sum() / (stop - scored_from)))
            run.seconds = time.perf_counter() - begin
        else:
            begin, generated = time.perf_counter(), []
            token = greedy(logits[:, -1])  # (B,)
            try:
                for _ in range(max_new):
                    generated.append(int(token[0]))
                    logits = model(input_ids=token[:, None], cache=cache, use_cache=True).logits  # (B, 1, V)
                    token = greedy(logits[:, -1])
            except KeyboardInterrupt:
                run.interrupted = True
            run.seconds, run.new_tokens = time.perf_counter() - begin, len(generated) * batch
            run.tokens, run.text = generated, unwrapped.source.tokenizer.decode(generated)
    finally:
        if progress:
            print(file=sys.stderr)
        if spec in EXACT_CACHES:
            model.set_attn_implementation("drrl")
    run.exact_bytes = cache.get_seq_length() * unwrapped.exact_token_bytes * batch
    run.resident_bytes = resident_bytes(cache)  # a StaticCache holds its full length from the start
    if controller is None:
        run.cache_bytes = run.exact_bytes
    else:
        run.cache_bytes, run.levels = cache.nbytes(), level_summary(unwrapped.ladder, cache.blocks)
    return run


def cmd_generate(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import drrl_env  # noqa: F401
    from experiments.options import parse_kv_kwargs

    if not 0 < args.budget <= 1:
        raise ValueError(f"--budget must be a fraction of the exact cache in (0, 1], got {args.budget}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    source = args.eval or args.prompt_file
    text = Path(source).read_text(encoding="utf-8") if source else args.prompt
    if not text or not text.strip():
        raise ValueError("the prompt is empty; pass --prompt TEXT, --prompt-file FILE or --eval FILE")
    env = gym.make("DRRL-KV-v0", **{"model": args.model, "budget": args.budget, **parse_kv_kwargs(args.env_kwargs)})
    unwrapped = env.unwrapped
    limit = unwrapped.config.max_seq_len
    ids = torch.tensor(unwrapped.source.tokenizer(text)["input_ids"], dtype=torch.long)
    if args.eval:
        ids = ids[:limit]
        if len(ids) < unwrapped.config.window + unwrapped.config.block + 2:
            raise ValueError(f"--eval needs a document of at least window + block + 2 tokens; it has {len(ids)}")
    elif len(ids) + args.max_new_tokens > limit:
        raise ValueError(
            f"the prompt ({len(ids)} tokens) plus --max-new-tokens {args.max_new_tokens} is "
            f"{len(ids) + args.max_new_tokens} tokens, beyond the {limit} the cache is configured for "
            "(--env-kwargs max_seq_len=N raises it, up to the model's positions)"
        )
    runs = []
    for spec in args.compare.split(",") if args.compare else [args.policy]:
        run = run_policy(
            env, spec.strip(), ids, args.max_new_tokens, ids if args.eval else None, len(ids) > 512, args.path
        )
        runs.append(run)
        if not args.eval:
            print(f"--- {run.policy}{' (interrupted)' if run.interrupted else ''}\n{run.text}\n")
        if run.interrupted:
            break
    print(HEADER)
    for run in runs:
        print(run.row())
    return 0


def add_parser(sub: Any) -> None:
    """Registers ``drrl generate`` on the CLI's subparsers."""
    p = sub.add_parser(
        "generate",
        help="generate (or score) text over a KV cache whose blocks a policy stores "
        "(DRRL-KV-v0's cache; needs the [llm] extra for SmolLM2)",
    )
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--prompt-file", help="a UTF-8 text file: the prompt")
    given.add_argument("--prompt", help="the prompt text")
    given.add_argument("--eval", help="score this document's teacher-forced perplexity instead of generating")
    p.add_argument("--model", default="smollm2-135m", help="a causal LM (alias, folder or GGUF file)")
    p.add_argument(
        "--policy",
        default="uniform:int4",
        help="a DRRL-KV-v0 baseline (exact, streaming, uniform:LEVEL, h2o:TAU, pyramid, energy:TAU, greedy, "
        "static:FILE; default: the best measured at budget 0.25) "
        "or a trained agent's model.zip (with its model.kv.json sidecar)",
    )
    p.add_argument("--budget", type=float, default=0.25, help="cache bytes cap, a fraction of the exact fp16 cache")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate after the prompt (greedy)")
    p.add_argument(
        "--path",
        default="speed",
        choices=("speed", "speed-bf16", "memory"),  # drrl_env.kv.cache.PATHS, not imported here: it loads transformers
        help="speed: stored blocks leave the per-step tensors and rank levels are read as coefficients; speed-bf16: "
        "the same, stored blocks held in bfloat16; memory: every stored block rebuilt dense in place "
        "(drrl_env/kv/cache.py)",
    )
    p.add_argument(
        "--compare",
        help=f"comma-separated policies run on the same prompt, side by side ({DYNAMIC} and {PREALLOCATED}: "
        "transformers' DynamicCache and StaticCache with SDPA, exact)",
    )
    p.add_argument(
        "--env-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="DRRL-KV-v0 options (KVConfig fields), e.g. levels=evict,r8,int4,exact window=256",
    )
    p.set_defaults(func=cmd_generate)
