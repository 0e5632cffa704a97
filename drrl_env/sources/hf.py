"""Attention captured from a Hugging Face ``transformers`` model run on a text corpus.

The model's attention goes through the registered ``drrl`` function (``hf_attention.py``): a
forward pass with ``drrl_records`` captures every layer's per-head q, k, v; one with ``drrl_plan``
runs the low-rank attention of a rank plan.  Any model whose attention goes through the registry
works: BERT-style encoders, GPT-2, Llama-style models with grouped-query attention and causal masks.
Loading is in ``hf_loading.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from drrl_env.sources.base import (
    AttentionSource,
    AttentionTrace,
    LayerInputs,
    LowRankPlan,
    ModelOutputs,
    SourceSpec,
    register_source,
)
from drrl_env.sources.corpus import load_corpus
from drrl_env.sources.hf_loading import load_model, model_fingerprint, position_limit

if TYPE_CHECKING:
    from drrl_env.config import EnvConfig


@register_source
class HFAttentionSource(AttentionSource):
    """Documents of a text corpus, tokenized for ``model``; ``trace(i)`` runs the model on document i.

    Documents with fewer than ``min_doc_tokens`` tokens are left out; longer ones are truncated
    to ``max_seq_len`` (default: the model's position limit).
    """

    name = "model"
    runs_model = True

    @classmethod
    def from_config(cls, cfg: EnvConfig, device: torch.device) -> HFAttentionSource:
        """From an ``EnvConfig`` or any config with its source fields (DRRL-KV-v0's ``KVConfig``)."""
        return cls(
            cfg.model,
            tokenizer=cfg.tokenizer,
            corpus=cfg.corpus,
            split=cfg.split,
            max_seq_len=cfg.max_seq_len,
            min_doc_tokens=cfg.min_doc_tokens,
            device=device,
        )

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None,
        corpus: str | Sequence[str] | None,
        split: str,
        max_seq_len: int | None,
        min_doc_tokens: int,
        device: torch.device,
    ) -> None:
        self.device = device
        self.model, self.tokenizer = load_model(model, tokenizer)
        self.causal_lm = type(self.model).__name__.endswith("ForCausalLM")
        self._fingerprint = model_fingerprint(model, self.model)
        self.model.to(device).eval()
        limit = position_limit(self.model.config)
        if max_seq_len is not None and limit is not None and max_seq_len > limit:
            raise ValueError(f"max_seq_len={max_seq_len} exceeds model {model!r}'s {limit} positions")
        seq_len = max_seq_len or limit
        if seq_len is None:
            raise ValueError(f"model {model!r} declares no position limit; pass max_seq_len")
        documents = load_corpus(corpus, split)
        self._names: list[str] = []
        self._token_ids: list[torch.Tensor] = []
        for doc in documents:
            ids = self.tokenizer(doc.text, truncation=True, max_length=seq_len)["input_ids"]
            if len(ids) >= min_doc_tokens:
                self._names.append(doc.name)
                self._token_ids.append(torch.tensor(ids, dtype=torch.long))
        if not self._token_ids:
            raise ValueError(
                f"no document of the corpus ({len(documents)} in split {split!r}) has at least "
                f"min_doc_tokens={min_doc_tokens} tokens; lower min_doc_tokens or pass longer texts"
            )
        probe = self._capture(self._token_ids[0][: min(16, len(self._token_ids[0]))])
        if not probe:
            raise ValueError(
                f"model {model!r} ({type(self.model).__name__}) never called the attention registry; "
                "its attention cannot be captured (it must honour config._attn_implementation)"
            )
        first = probe[0]
        heads, kv_heads = first["query"].shape[0], first["key"].shape[0]
        shapes = {(r["query"].shape[0], r["key"].shape[0], r["query"].shape[-1]) for r in probe}
        if len(shapes) != 1 or heads % kv_heads:
            raise ValueError(
                f"model {model!r} has attention shapes {sorted(shapes)} that differ by layer; "
                "the environment needs the same heads and head_dim in every layer"
            )
        self.spec = SourceSpec(
            n_layers=len(probe),
            n_heads=heads,
            n_kv_heads=kv_heads,
            head_dim=first["query"].shape[-1],
            max_seq_len=seq_len,
            causal=first["causal"],
        )

    @property
    def document_names(self) -> list[str]:
        return list(self._names)

    def document_key(self, index: int) -> str:
        tokens = hashlib.sha256(self._token_ids[index].numpy().tobytes()).hexdigest()
        return f"{self._fingerprint} tokens={tokens}"

    def seq_len(self, index: int) -> int:
        return len(self._token_ids[index])

    def token_ids(self, index: int) -> torch.Tensor:
        return self._token_ids[index]

    def trace(self, index: int) -> AttentionTrace:
        records = self._capture(self._token_ids[index])
        return AttentionTrace(
            queries=torch.stack([r["query"] for r in records]).float(),  # (n_layers, H, L, d)
            keys=torch.stack([r["key"] for r in records]).float(),  # (n_layers, H_kv, L, d)
            values=torch.stack([r["value"] for r in records]).float(),  # (n_layers, H_kv, L, d)
            scaling=torch.tensor([r["scaling"] for r in records]),
            causal=records[0]["causal"],
        )

    def model_outputs(self, index: int, plan: LowRankPlan) -> ModelOutputs:
        """The model on document ``index`` with ``plan``'s ranks applied to every attention call: the
        mean-pooled last hidden state (for all-MiniLM-L6-v2 the sentence embedding before
        normalization), and for causal language models the perplexity exp(mean next-token NLL)."""
        pooled, perplexity = self._forward(index, plan.scored_from, drrl_plan=plan)
        if plan.calls != self.spec.n_layers:
            raise RuntimeError(f"expected {self.spec.n_layers} attention calls, saw {plan.calls}")
        return ModelOutputs(pooled, perplexity, plan.seconds)

    def steered_outputs(
        self, index: int, layer: Callable[[LayerInputs], torch.Tensor], scored_from: int
    ) -> ModelOutputs:
        """The model on document ``index`` with every attention call's output given by ``layer``
        (a closed-loop episode, ``episode.py``); attention time is not measured (0)."""
        pooled, perplexity = self._forward(index, scored_from, drrl_layer=layer)
        return ModelOutputs(pooled, perplexity, 0.0)

    @torch.no_grad()
    def _forward(self, index: int, scored_from: int, **attention: Any) -> tuple[torch.Tensor, float | None]:
        """(pooled last hidden state (hidden,), perplexity from position ``scored_from`` on, or None)."""
        ids = self._token_ids[index][None].to(self.device)
        if self.causal_lm:
            labels = ids.clone()
            labels[:, :scored_from] = -100  # not scored (a decode workload's prompt)
            out = self.model(input_ids=ids, labels=labels, use_cache=False, output_hidden_states=True, **attention)
            return out.hidden_states[-1][0].mean(0), float(torch.exp(out.loss))
        return self.model(input_ids=ids, use_cache=False, **attention).last_hidden_state[0].mean(0), None

    @torch.no_grad()
    def _capture(self, token_ids: torch.Tensor) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        self.model(input_ids=token_ids[None].to(self.device), use_cache=False, drrl_records=records)
        return records
