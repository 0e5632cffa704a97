"""Attention sources: where the environment's q, k, v come from, and the texts they read.

- ``base.py``: the interface (a fixed list of documents, each turned into per-layer q, k, v).
- ``synthetic.py``: a seeded generator.  ``hf.py``: a Hugging Face model on a corpus
  (``corpus.py``), captured through ``hf_attention.py`` and loaded by ``hf_loading.py``.
"""

from __future__ import annotations

import os

import torch

from drrl_env.config import EnvConfig
from drrl_env.sources.base import AttentionSource, AttentionTrace, SourceSpec
from drrl_env.sources.synthetic import SyntheticSource

__all__ = [
    "AttentionSource",
    "AttentionTrace",
    "SourceSpec",
    "SyntheticSource",
    "make_source",
    "resolve_device",
    "runtime_device",
]


def runtime_device(cfg: EnvConfig) -> torch.device:
    """The torch device of the config's ``device`` option, after applying its ``threads`` option."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads or idle_cores())
    return resolve_device(cfg.device)


def idle_cores() -> int:
    """Cores that other work leaves idle: the core count minus the 1-minute load average, at least 1."""
    return max(1, round((os.cpu_count() or 1) - os.getloadavg()[0]))


def resolve_device(name: str) -> torch.device:
    """The torch device of the ``device`` option, checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device={name!r} is not a device name; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was asked for but CUDA is not available; use 'cpu' or 'auto'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
        )
    return device


def make_source(cfg: EnvConfig, device: torch.device) -> AttentionSource:
    """The source that ``cfg.source`` names, built from the config's source options."""
    if cfg.source == "synthetic":
        return SyntheticSource(
            n_layers=cfg.synthetic_layers,
            n_heads=cfg.synthetic_heads,
            n_kv_heads=cfg.synthetic_kv_heads,
            head_dim=cfg.synthetic_head_dim,
            seq_len=cfg.max_seq_len or cfg.synthetic_seq_len,
            decay=cfg.synthetic_decay,
            head_variety=cfg.synthetic_head_variety,
            causal=cfg.synthetic_causal,
            n_documents=cfg.synthetic_documents,
            seed=cfg.synthetic_seed,
            split=cfg.split,
            device=device,
        )
    from drrl_env.sources.hf import HFAttentionSource

    return HFAttentionSource(
        cfg.model,
        tokenizer=cfg.tokenizer,
        corpus=cfg.corpus,
        split=cfg.split,
        max_seq_len=cfg.max_seq_len,
        min_doc_tokens=cfg.min_doc_tokens,
        device=device,
    )
