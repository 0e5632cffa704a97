"""What every attention source gives the environment: per-layer, per-head q, k, v of a document, and
the records that pass between the environment and a model's attention calls (``LayerInputs``,
``LowRankPlan``); the registry of sources (the ``source`` option).  No transformers import, so the
synthetic source never loads it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from drrl_env.registry import Registry

if TYPE_CHECKING:  # annotations only: the attention layer is not imported by the sources' base
    from drrl_env.attention.methods.base import LowRankMethod
    from drrl_env.attention.workload import Prefill
    from drrl_env.config import EnvConfig

SPLIT_MODULUS = 10  # items hash to buckets 0..9: 0-2 test, 3-4 validation, 5-9 train (30/20/50)
TEST_BUCKETS, VALIDATION_BUCKETS = (0, 1, 2), (3, 4)  # a wide test split: >= 48 pydoc documents from >= 15 topics


def split_of(bucket: int) -> str:
    """The split of an item (a topic, a file, a synthetic draw) whose hash or index is ``bucket``."""
    bucket %= SPLIT_MODULUS
    return "test" if bucket in TEST_BUCKETS else "validation" if bucket in VALIDATION_BUCKETS else "train"


@dataclass(frozen=True)
class SourceSpec:
    """Shape of the attention a source produces (fixed for all its documents)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_seq_len: int
    causal: bool

    @property
    def kv_group(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


@dataclass(frozen=True)
class ModelOutputs:
    """One forward pass of a model with a rank plan: the mean-pooled last hidden state (hidden,),
    the next-token perplexity of the document (causal language models; None otherwise) and the
    seconds spent in attention."""

    pooled: torch.Tensor
    perplexity: float | None
    attention_seconds: float


@dataclass(frozen=True)
class AttentionTrace:
    """The full-rank attention inputs of one document, every layer.

    queries: (n_layers, n_heads, L, head_dim), after rotary embeddings where the model has them.
    keys, values: (n_layers, n_kv_heads, L, head_dim).
    scaling: (n_layers,) the factor applied to q.k (1/sqrt(head_dim) for most models).
    causal: whether token i attends only to tokens j <= i.
    """

    queries: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    scaling: torch.Tensor
    causal: bool

    def __post_init__(self) -> None:
        for name in ("queries", "keys", "values"):
            if not torch.isfinite(getattr(self, name)).all():
                raise ValueError(f"attention {name} contain NaN or inf; the source produced non-finite values")

    @property
    def seq_len(self) -> int:
        return self.queries.shape[2]


class AttentionSource(ABC):
    """A fixed list of documents, each turned into an :class:`AttentionTrace` on request.

    A new source is one subclass with a ``name`` (its ``source=`` option), ``runs_model`` (whether it
    runs a model, whose forward the closed loop and the end-of-episode term need: then it implements
    :meth:`model_outputs`) and :meth:`from_config`, registered with ``@register_source``.
    """

    name = "source"
    runs_model = False
    spec: SourceSpec
    device: torch.device  # where its traces live

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: EnvConfig, device: torch.device) -> AttentionSource:
        """The source built from the config's options, its traces on ``device``."""

    @property
    @abstractmethod
    def document_names(self) -> list[str]:
        """Names of the documents, in index order."""

    @abstractmethod
    def document_key(self, index: int) -> str:
        """A string that changes whenever document ``index``'s trace could change (source and content)."""

    def seq_len(self, index: int) -> int:
        """Tokens of document ``index`` (its trace's length), known without running the model."""
        return self.spec.max_seq_len

    @abstractmethod
    def trace(self, index: int) -> AttentionTrace:
        """Full-rank q, k, v of document ``index`` (deterministic for a given index)."""

    def model_outputs(self, index: int, plan: Any) -> ModelOutputs:
        """The model's outputs on document ``index`` with a rank plan applied (model sources only)."""
        raise ValueError(f"{type(self).__name__} runs no model: model-level outputs need a source that runs one")


SOURCES: Registry[type[AttentionSource]] = Registry(
    AttentionSource, "source", "or register an AttentionSource subclass with drrl_env.sources.base.register_source"
)
register_source = SOURCES.register
SOURCES.register_lazy("model", "drrl_env.sources.hf")  # imports transformers: only when asked for


@dataclass(frozen=True)
class LayerInputs:
    """One attention call's inputs (batch of one): query (H, L, d), key and value (H_kv, L, d)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    scaling: float
    causal: bool


@dataclass
class LowRankPlan:
    """Ranks to apply in a forward pass: ``ranks[layer, segment]`` (head_dim = exact attention), over
    ``workload``'s ``segments``.

    ``seconds`` accumulates the wall time spent in attention (all layers; on CUDA the device is
    synchronized before and after each call, so kernels are timed, not their launches).
    ``scored_from``: the first position whose next-token loss the perplexity counts (a decode
    workload scores the decoded tokens only).
    """

    ranks: np.ndarray
    segments: list[tuple[int, int]]
    workload: Prefill
    method: LowRankMethod
    compress_values: bool
    scored_from: int = 0
    calls: int = 0
    seconds: float = 0.0
