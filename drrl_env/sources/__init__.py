"""Attention sources: where the environment's q, k, v come from, and the texts they read.

- ``base.py``: the interface (a fixed list of documents, each turned into per-layer q, k, v) and the
  registry of the ``source`` option (``model`` is registered lazily: transformers loads only for it).
- ``synthetic.py``: a seeded generator.  ``hf.py``: a Hugging Face model on a corpus
  (``corpus.py``), captured through ``hf_attention.py`` and loaded by ``hf_loading.py``.
"""

from __future__ import annotations

import os

import torch

from drrl_env.config import EnvConfig
from drrl_env.sources.base import SOURCES, AttentionSource, AttentionTrace, SourceSpec, register_source
from drrl_env.sources.synthetic import SyntheticSource

__all__ = [
    "AttentionSource",
    "AttentionTrace",
    "SourceSpec",
    "SOURCES",
    "SyntheticSource",
    "make_source",
    "register_source",
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
    """The registered source that ``cfg.source`` names, built from the config's source options."""
    return SOURCES.get(cfg.source).from_config(cfg, device)
